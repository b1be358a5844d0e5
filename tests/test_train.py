"""The shared training loop: validated config, seeded and deterministic, and it learns."""
from __future__ import annotations

import pytest
import torch

from edgeprune.training.data import load_dataset
from edgeprune.errors import InputError
from edgeprune.training.models import CifarResNet
from edgeprune.training.train import DEMO_TRAIN_CONFIG, TrainConfig, evaluate, train_model

TINY = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=0)


@pytest.fixture(scope="module")
def tiny_splits():
    return load_dataset("synthetic", seed=0, image_size=16, train_size=64, test_size=32)


def _tiny_model(seed: int = 0) -> CifarResNet:
    torch.manual_seed(seed)
    return CifarResNet((1, 1), (8, 16), num_classes=10)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -0.1}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"schedule": "step"}, "schedule must be one of cosine, onecycle"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
    ],
)
def test_train_config_rejects_bad_values_with_the_field_name(bad, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**bad)


def test_train_config_round_trips_through_a_dict():
    assert TrainConfig.from_dict(DEMO_TRAIN_CONFIG.to_dict()) == DEMO_TRAIN_CONFIG
    with pytest.raises(InputError, match="unknown training option"):
        TrainConfig.from_dict({"epochs": 1, "warmup": 3})


def test_same_seed_gives_identical_weights(tiny_splits):
    first, second = _tiny_model(), _tiny_model()
    train_model(first, tiny_splits, TINY)
    train_model(second, tiny_splits, TINY)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_different_seed_gives_different_weights(tiny_splits):
    first, second = _tiny_model(), _tiny_model()
    train_model(first, tiny_splits, TINY)
    train_model(second, tiny_splits, TrainConfig(**{**TINY.to_dict(), "seed": 1}))
    assert not torch.equal(first.fc.weight, second.fc.weight)


def test_training_leaves_the_callers_random_state_alone(tiny_splits):
    model = _tiny_model()
    before = torch.random.get_rng_state()
    train_model(model, tiny_splits, TINY)
    assert torch.equal(before, torch.random.get_rng_state())


def test_training_learns_an_easy_task():
    splits = load_dataset("digits", seed=0, image_size=8, train_size=400, test_size=200)
    model = _tiny_model()
    result = train_model(model, splits, TrainConfig(epochs=4, batch_size=32, lr=0.1, schedule="cosine"))
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.test.accuracy > 0.3  # chance is 0.1
    assert result.test.n == 200


def test_parameters_restricts_what_is_optimised(tiny_splits):
    model = _tiny_model()
    conv_before = model.conv1.weight.detach().clone()
    fc_before = model.fc.weight.detach().clone()
    train_model(model, tiny_splits, TrainConfig(epochs=1, batch_size=16, weight_decay=0.0), parameters=model.fc.parameters())
    assert torch.equal(model.conv1.weight, conv_before)
    assert not torch.equal(model.fc.weight, fc_before)


def test_extra_loss_is_added_every_step(tiny_splits):
    calls = []

    def shrink_fc(model):
        calls.append(1)
        return model.fc.weight.abs().sum()

    penalised, plain = _tiny_model(), _tiny_model()
    config = TrainConfig(epochs=1, batch_size=16, lr=0.02, schedule="cosine", weight_decay=0.0)
    train_model(penalised, tiny_splits, config, extra_loss=shrink_fc)
    train_model(plain, tiny_splits, config)
    assert len(calls) == 4
    assert penalised.fc.weight.abs().sum() < plain.fc.weight.abs().sum()


def test_progress_reports_every_step_under_the_label(tiny_splits):
    seen = []
    train_model(_tiny_model(), tiny_splits, TrainConfig(epochs=2, batch_size=16), progress=lambda *a: seen.append(a),
                label="fine-tune")
    assert seen[0] == ("fine-tune", 1, 8) and seen[-1] == ("fine-tune", 8, 8)
    assert len(seen) == 8


def test_divergence_is_reported_with_what_to_do(tiny_splits):
    with pytest.raises(InputError, match="diverged.*lower the learning rate"):
        train_model(_tiny_model(), tiny_splits, TrainConfig(epochs=3, batch_size=16, lr=1e12, schedule="cosine"))


def test_evaluate_uses_eval_mode_and_restores_the_mode(tiny_splits):
    model = _tiny_model()
    model.train()
    running_mean = model.bn1.running_mean.clone()
    result = evaluate(model, tiny_splits.test, batch_size=10)
    assert model.training
    assert torch.equal(model.bn1.running_mean, running_mean)
    assert result.n == 32 and 0.0 <= result.accuracy <= 1.0 and result.loss > 0
