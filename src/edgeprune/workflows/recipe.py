"""The pruning recipe that export, sweep and prune share, one rule each: where importance scores
come from (learned gates or a criterion), which gate values the shrunk weights absorb, how a
pruned model is fine-tuned, and the built-in demo run that is trained on first use.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from edgeprune.analysis.graph import ChannelGraph
from edgeprune.errors import InputError
from edgeprune.importance.criteria import score_units
from edgeprune.importance.gates import GateConfig, gates_to_fold, load_or_learn_gates
from edgeprune.progress import ProgressCallback
from edgeprune.training.train import DEMO_TRAIN_CONFIG, TrainConfig, TrainResult, train_model

DEMO_RUN = Path("runs/demo")
DEMO_MODEL = "resnet20"
DEMO_DATA = "synthetic"
#: The demo's data: 3000 train / 1000 test images of the built-in scenes at 32x32, so that
#: `make demo` (dense training and two exports) fits its 5 minutes on 2 cores.
DEMO_DATA_SIZES = {"train_size": 3000, "test_size": 1000}


def is_demo_run(run_dir: Path) -> bool:
    return Path(run_dir).resolve() == DEMO_RUN.resolve()


def ensure_run(run_dir: Path, *, seed: int = 0, progress: Optional[ProgressCallback] = None):
    """(LoadedRun, trained now): the built-in demo run is trained on first use, any other must exist."""
    from edgeprune.training.runs import load_run, train_run

    run_dir = Path(run_dir)
    if not run_dir.exists() and is_demo_run(run_dir):
        train_run(run_dir, DEMO_MODEL, DEMO_DATA, replace(DEMO_TRAIN_CONFIG, seed=seed), progress=progress,
                  **DEMO_DATA_SIZES)
        return load_run(run_dir), True
    return load_run(run_dir), False


@dataclass(frozen=True)
class FinetuneRecipe:
    """How every pruned model is fine-tuned: SGD (Nesterov), cosine schedule, light label smoothing,
    and distillation from the dense model wherever it is at hand (`distill_weight` 0 turns it off).
    Five epochs after a one-epoch gate phase: the comparison at equal compute in
    benchmarks/results/compare_criteria.md (with the earlier one to three, issue 15 measured the
    built-in data 10.8 points under dense at keep 0.3)."""

    epochs: int = 5
    lr: float = 0.02
    batch_size: int = 128
    label_smoothing: float = 0.05
    distill_weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise InputError(f"--finetune-epochs must be an integer >= 0, got {self.epochs!r}")
        if not self.lr > 0:
            raise InputError(f"fine-tune lr must be > 0, got {self.lr}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise InputError(f"--distill-weight must be in [0, 1], got {self.distill_weight}")
        if not self.temperature > 0:
            raise InputError(f"--distill-temperature must be > 0, got {self.temperature}")

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, schedule="cosine",
                           label_smoothing=self.label_smoothing, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finetune(model: nn.Module, splits: Any, recipe: FinetuneRecipe, *, seed: int,
             teacher: Optional[nn.Module] = None,
             progress: Optional[ProgressCallback] = None) -> Optional[TrainResult]:
    """Fine-tune `model` in place with `recipe` (seeded), distilled from `teacher` (the dense
    model) when one is given and the recipe's weight is above 0; None when it has no epochs."""
    if recipe.epochs == 0:
        return None
    from edgeprune.training.distill import Distillation

    distill = Distillation(teacher, recipe.temperature, recipe.distill_weight) \
        if teacher is not None and recipe.distill_weight > 0 else None
    return train_model(model, splits, recipe.train_config(seed), distill=distill, progress=progress,
                       label="fine-tuning")


#: Criteria that train before they score: the gate phase, or Network Slimming's sparsity training
#: (its epochs are the gate phase's). The others score the dense model as it is.
TRAINED_CRITERIA = ("gate", "slimming")


def compute_epochs(criterion: str, phase_epochs: int, finetune_epochs: int, steps: int = 1, *,
                   equal_compute: bool = True) -> dict[str, int]:
    """Epochs of each phase of one pruned model. With `equal_compute` every criterion spends
    `phase_epochs + finetune_epochs` in all: one that needs no phase fine-tunes for the phase's
    epochs too, and gradual pruning's recovery epochs (one per step but the last) come out of the
    fine-tune, so a comparison of criteria or of one-shot and gradual pruning is at equal compute."""
    phase = phase_epochs if criterion in TRAINED_CRITERIA else 0
    recovery = steps - 1
    finetune = finetune_epochs
    if equal_compute:
        finetune = finetune_epochs + phase_epochs - phase - recovery
    if finetune < 0:
        raise InputError(f"{steps} steps need {recovery} recovery epochs, more than the {finetune + recovery} "
                         "fine-tune epochs they come out of; raise --finetune-epochs or lower --steps")
    return {"gate_phase_max": phase if criterion == "gate" else 0,
            "sparsity_training": phase if criterion == "slimming" else 0,
            "recovery": recovery, "finetune": finetune}


@dataclass(frozen=True)
class Importance:
    """Per-unit scores by group id, the gate values the shrunk weights must absorb (or None), and
    the model to prune when the criterion trained one (Network Slimming's sparsity-trained copy)."""

    scores: dict[int, np.ndarray]
    fold: Optional[torch.Tensor]
    criterion: str
    model: Optional[nn.Module] = None


@dataclass(frozen=True)
class SlimmingConfig:
    """Network Slimming's sparsity phase (Liu et al. 2017): train with an L1 penalty on every
    BatchNorm scale, then rank channels by |gamma|. `epochs` defaults to the gate phase's, so
    the two learned criteria get the same compute."""

    epochs: int = GateConfig.max_epochs
    l1: float = 1e-3
    lr: float = 0.01
    batch_size: int = 128
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slimming_phase(model: nn.Module, train_set: Any, config: SlimmingConfig = SlimmingConfig(),
                   progress: Optional[ProgressCallback] = None) -> nn.Module:
    """A copy of `model` trained with the L1 penalty on BatchNorm scales; `model` is untouched."""
    import copy
    from types import SimpleNamespace

    from torch.utils.data import Subset

    slim = copy.deepcopy(model)
    scales = [m.weight for m in slim.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not scales:
        raise InputError("criterion 'slimming' needs BatchNorm layers (it ranks channels by their scales); "
                         "use magnitude or gate for this model")
    penalty = lambda _model: config.l1 * sum(w.abs().sum() for w in scales)
    monitor = Subset(train_set, range(min(256, len(train_set))))  # train_model reports on it; unused here
    train_model(slim, SimpleNamespace(train=train_set, test=monitor),
                TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, schedule="cosine",
                            seed=config.seed),
                extra_loss=penalty, progress=progress, label="slimming (sparsity training)")
    return slim.eval()


def importance_from(criterion: str, model: nn.Module, graph: ChannelGraph, *,
                    gates: Optional[torch.Tensor] = None, gate_config: GateConfig = GateConfig(),
                    data: Any = None, seed: int = 0, slimmed: Optional[nn.Module] = None) -> Importance:
    """Scores for `criterion`; learned gates rank by |gate| and are folded only by `gates_to_fold`;
    `slimming` ranks the sparsity-trained `slimmed` copy by |gamma| and prunes that copy."""
    if criterion == "slimming":
        if slimmed is None:
            raise InputError("criterion 'slimming' needs its sparsity-training phase: run it through "
                             "edgeprune export or sweep (or pass slimmed=slimming_phase(...))")
        return Importance(score_units("bn", slimmed, graph), None, criterion, model=slimmed)
    scores = score_units(criterion, model, graph, gates=gates, data=data, seed=seed)
    fold = gates_to_fold(gates, gate_config) if criterion == "gate" else None
    return Importance(scores, fold, criterion)


def learned_importance(criterion: str, model: nn.Module, graph: ChannelGraph, train_set: Any, *,
                       gate_config: GateConfig, gates_path: Optional[Path], seed: int = 0,
                       progress: Optional[ProgressCallback] = None) -> tuple[Importance, bool]:
    """`importance_from`, learning the gates first when the criterion needs them (cached at
    `gates_path`). Returns the importance and whether gates were learned now."""
    gates, learned, slimmed = None, False, None
    if criterion == "gate":
        gates, learned = load_or_learn_gates(gates_path, model, graph, train_set, gate_config, progress)
    if criterion == "slimming":
        slimmed = slimming_phase(model, train_set, SlimmingConfig(epochs=gate_config.max_epochs, seed=seed), progress)
    return importance_from(criterion, model, graph, gates=gates, gate_config=gate_config,
                           data=train_set, seed=seed, slimmed=slimmed), learned
