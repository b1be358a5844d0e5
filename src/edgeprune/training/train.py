"""Dense training and fine-tuning: one seeded SGD loop that every stage shares.

The same `train_model` trains the dense model, learns gates (`parameters` restricts what moves,
`extra_loss` adds the sparsity penalty) and fine-tunes the shrunk model, so all three follow
one recipe: nesterov SGD, a cosine or one-cycle schedule, label smoothing. On CPU the result
depends only on the model's initial weights, the data and `TrainConfig.seed`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from edgeprune.errors import InputError
from edgeprune.progress import ProgressCallback, report
from edgeprune.devices import Precision, model_device
from edgeprune.training import distributed
from edgeprune.training.distill import Distillation

SCHEDULES = ("cosine", "onecycle")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


@dataclass(frozen=True)
class TrainConfig:
    """How to train; validated on construction so a bad option fails before any work."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        _require(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}")
        _require(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            f"batch_size must be an integer >= 1, got {self.batch_size!r}",
        )
        _require(math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        _require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _require(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _require(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        _require(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        _require(
            isinstance(self.num_workers, int) and self.num_workers >= 0,
            f"num_workers must be an integer >= 0, got {self.num_workers!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, f"unknown training option(s): {', '.join(unknown)}")
        return cls(**dict(data))


#: The recipe `make demo` uses for resnet20 on the built-in `synthetic` data, at the sizes in
#: `workflows.recipe.DEMO_DATA_SIZES` (3000 train / 1000 test images, 8 epochs): 93.7% test
#: accuracy (seed 0), as 6000 images for 7 epochs gave, in about half the time (see README).
DEMO_TRAIN_CONFIG = TrainConfig(
    epochs=8, batch_size=128, lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="onecycle", label_smoothing=0.05
)


@dataclass(frozen=True)
class EvalResult:
    """Top-1 accuracy (0..1) and mean cross-entropy over `n` samples."""

    accuracy: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochStats:
    """Running averages over one epoch's batches (train mode, so not a clean evaluation)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    lr_end: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """Per-epoch history, the final test evaluation and the wall time of the training loop."""

    history: tuple[EpochStats, ...]
    test: EvalResult
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": [epoch.to_dict() for epoch in self.history],
            "test": self.test.to_dict(),
            "train_seconds": self.train_seconds,
        }


def train_model(
    model: nn.Module,
    splits: Any,
    config: TrainConfig,
    *,
    parameters: Optional[Iterable[nn.Parameter]] = None,
    extra_loss: Optional[Callable[[nn.Module], Tensor]] = None,
    distill: Optional[Distillation] = None,
    progress: Optional[ProgressCallback] = None,
    label: str = "train",
) -> TrainResult:
    """Train `model` in place on `splits.train`, then evaluate it on `splits.test`; with
    `distill`, the loss is distilled from its teacher's logits (see `training.distill`).

    Seeds a private copy of torch's RNG (the caller's global RNG state is left as it was) and
    the loader's shuffle, so equal inputs give bit-identical weights on CPU. Raises
    `InputError` if the loss stops being finite (lower the learning rate). Under torchrun (a
    process group is up) it is data-parallel: see `training.distributed`.
    """
    trainable = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise InputError("nothing to train: the model has no trainable parameters")
    if len(splits.train) == 0:
        raise InputError("the training split is empty; pass a larger train size")

    start = time.perf_counter()
    history: list[EpochStats] = []
    device = model_device(model)
    precision = Precision.for_device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        shuffle_generator = torch.Generator().manual_seed(config.seed)
        parallel = distributed.active()
        loader = distributed.train_loader(splits.train, config.batch_size, config.seed, config.num_workers) \
            if parallel else DataLoader(
            splits.train,
            batch_size=config.batch_size,
            shuffle=True,
            generator=shuffle_generator,
            num_workers=config.num_workers,
            drop_last=len(splits.train) > config.batch_size,
        )
        steps_per_epoch = len(loader)
        total_steps = steps_per_epoch * config.epochs
        optimizer = torch.optim.SGD(
            trainable,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.momentum > 0,
        )
        scheduler = _make_scheduler(optimizer, config, total_steps)
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        scaler = precision.grad_scaler()
        precision.prepare(model)
        model.train()
        net = distributed.wrap(model) if parallel else model
        step = 0
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            if parallel:
                loader.sampler.set_epoch(epoch)
            for images, labels in loader:
                images, labels = precision.batch(images), labels.to(device)
                with precision.autocast():
                    logits = net(images)
                    if distill is not None:
                        loss = distill.loss(logits, distill.teacher_logits(images), labels, config.label_smoothing)
                    else:
                        loss = criterion(logits, labels)
                    if extra_loss is not None:
                        loss = loss + extra_loss(model)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise InputError(
                        f"{label}: training diverged (loss {loss_value} at epoch {epoch}, step {step + 1}); "
                        f"lower the learning rate (now {config.lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                step += 1
                loss_sum += loss_value * len(labels)
                correct += int((logits.detach().argmax(1) == labels).sum())
                seen += len(labels)
                report(progress, label, step, total_steps)
            if parallel:
                loss_sum, correct, seen = distributed.sum_over_ranks((loss_sum, correct, seen), device)
            history.append(
                EpochStats(
                    epoch=epoch,
                    train_loss=loss_sum / max(seen, 1),
                    train_accuracy=correct / max(seen, 1),
                    lr_end=float(optimizer.param_groups[0]["lr"]),
                    seconds=time.perf_counter() - epoch_start,
                )
            )
        if parallel:
            distributed.average_buffers(model)
    if precision.channels_last:
        model.to(memory_format=torch.contiguous_format)
    train_seconds = time.perf_counter() - start
    test = evaluate(model, splits.test)
    return TrainResult(history=tuple(history), test=test, train_seconds=train_seconds)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy in eval mode (fp32 on every device, so figures compare
    with the FP32 ONNX model's); the model's mode is restored after."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for images, labels in DataLoader(dataset, batch_size=batch_size, generator=torch.Generator()):
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
    finally:
        model.train(was_training)
    if seen == 0:
        raise InputError("cannot evaluate on an empty data set; pass a larger test size")
    return EvalResult(accuracy=correct / seen, loss=loss_sum / seen, n=seen)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """Per-step schedules; one-cycle warms up over a quarter of the steps (at least one step)."""
    if config.schedule == "cosine" or total_steps < 2:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=total_steps,
        pct_start=max(0.25, 1.5 / total_steps),
        cycle_momentum=False,
    )
