"""Gradual pruning: the cubic schedule's budgets, and N steps that end at the exact budget."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.analysis.graph import analyze
from edgeprune.errors import InputError
from edgeprune.plan import PlanConfig
from edgeprune.workflows.gradual import gradual_prune, kept_mask, step_keeps
from edgeprune.workflows.recipe import FinetuneRecipe, importance_from


def test_the_cubic_schedule_removes_most_units_early_and_ends_at_the_budget():
    keeps = step_keeps(0.3, 4)
    assert keeps[-1] == pytest.approx(0.3)
    assert keeps == pytest.approx(tuple(0.3 + 0.7 * (1 - t / 4) ** 3 for t in range(1, 5)))
    drops = [a - b for a, b in zip((1.0,) + keeps, keeps)]
    assert drops == sorted(drops, reverse=True)  # each step removes less than the one before
    assert step_keeps(0.5, 1) == (0.5,)
    with pytest.raises(InputError, match="--steps"):
        step_keeps(0.5, 0)


def _model():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_three_steps_meet_the_budget_and_pass_the_shrink_check():
    from edgeprune.training.data import load_dataset

    splits = load_dataset("digits", image_size=8, train_size=300, test_size=100)
    torch.manual_seed(0)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    importance = importance_from("magnitude", model, graph)
    config = PlanConfig(keep=0.4, round_to=1, min_channels=1)
    result, spent = gradual_prune(model, (3, 8, 8), graph, importance, config, 3, splits,
                                  FinetuneRecipe(epochs=1, batch_size=64), seed=0)
    one_shot, _ = gradual_prune(model, (3, 8, 8), graph, importance, config, 1, splits,
                                FinetuneRecipe(epochs=1, batch_size=64), seed=0)
    assert spent == 2  # one recovery epoch after each of the first two steps
    assert abs(result.plan.keep_achieved - one_shot.plan.keep_achieved) < 0.02
    assert abs(result.plan.keep_achieved - 0.4) < 0.03
    assert result.shrink_max_diff <= result.shrink_tolerance
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the dense model is untouched


def test_the_mask_follows_the_plan():
    torch.manual_seed(0)
    model = _model()
    graph = analyze(model, torch.randn(1, 3, 8, 8))
    from edgeprune.plan import make_plan

    plan = make_plan(model, graph, importance_from("magnitude", model, graph).scores,
                     PlanConfig(keep=0.5, round_to=1, min_channels=1))
    mask = kept_mask(graph, plan)
    assert int(mask.sum()) == sum(len(g.kept_units) for g in plan.groups)
