"""Distillation: the loss against a hand computation, and a fine-tune that uses the teacher."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.training.distill import Distillation, distillation_loss


def _hand_loss(student, teacher, labels, temperature, weight):
    total = 0.0
    for s, t, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in s))
        hard = log_z - s[y]
        p_t = [math.exp(v / temperature) for v in t]
        p_t = [v / sum(p_t) for v in p_t]
        q = [math.exp(v / temperature) for v in s]
        q = [v / sum(q) for v in q]
        kl = sum(p * math.log(p / qq) for p, qq in zip(p_t, q))
        total += (1 - weight) * hard + weight * temperature ** 2 * kl
    return total / len(labels)


def test_the_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5]])
    labels = torch.tensor([0, 2])
    got = distillation_loss(student, teacher, labels, temperature=4.0, weight=0.5)
    assert float(got) == pytest.approx(_hand_loss(student, teacher, labels, 4.0, 0.5), rel=1e-5)
    hard_only = distillation_loss(student, teacher, labels, temperature=4.0, weight=0.0)
    assert float(hard_only) == pytest.approx(float(nn.functional.cross_entropy(student, labels)), rel=1e-6)


def test_a_student_equal_to_its_teacher_pays_only_the_label_term():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    labels = torch.tensor([1])
    full = distillation_loss(logits, logits, labels, temperature=2.0, weight=0.25)
    assert float(full) == pytest.approx(0.75 * float(nn.functional.cross_entropy(logits, labels)), rel=1e-6)


def test_the_teacher_runs_without_gradients_and_keeps_its_mode():
    teacher = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()
    logits = Distillation(teacher).teacher_logits(torch.randn(2, 4))
    assert not logits.requires_grad and teacher.training


@pytest.mark.parametrize("kwargs, message", [({"temperature": 0.0}, "temperature"), ({"weight": 1.5}, "weight")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        Distillation(nn.Linear(2, 2), **kwargs)


def test_finetune_distils_from_the_teacher_when_one_is_given():
    from edgeprune.training.data import load_dataset
    from edgeprune.workflows.recipe import FinetuneRecipe, finetune

    splits = load_dataset("digits", image_size=8, train_size=200, test_size=100)
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    teacher, plain, distilled = make(), make(), make()
    distilled.load_state_dict(plain.state_dict())
    recipe = FinetuneRecipe(epochs=1, batch_size=50)
    finetune(plain, splits, recipe, seed=0)
    finetune(distilled, splits, recipe, seed=0, teacher=teacher)
    assert not torch.equal(plain[1].weight, distilled[1].weight)  # the teacher's logits changed the loss
    off = make()
    off.load_state_dict(distilled.state_dict())
    again = make()
    again.load_state_dict(distilled.state_dict())
    finetune(off, splits, FinetuneRecipe(epochs=1, batch_size=50, distill_weight=0.0), seed=0, teacher=teacher)
    finetune(again, splits, FinetuneRecipe(epochs=1, batch_size=50), seed=0)
    assert torch.equal(off[1].weight, again[1].weight)  # weight 0: labels only, teacher ignored
