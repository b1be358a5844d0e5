"""Learned channel gates: one scalar per prunable unit, trained briefly with an L1 penalty.

The gates multiply the input of every layer that consumes the unit's channels (see
`shrink.gated`), so a gate at zero is exactly a removed channel and the gate's magnitude is how
much the network relies on it. The phase runs after dense training, with the weights frozen by
default (the dense model is left untouched) or trained jointly. The penalty ramps up linearly
over the first epoch, and training stops once the ranking of units stops changing.

The defaults come from benchmarks/results/compare_criteria.md, where every criterion gets the
same epochs: a one-epoch phase (the rest of the budget is better spent fine-tuning the pruned
model), gates learned by Adam (lr 0.02). Plain SGD on the gates (lr 0.2, momentum 0.9) keeps
the relative size of their accumulated gradients, which looked like a sharper ranking, but with
gate scores ranked on their shared scale (`plan.SHARED_SCALE_CRITERIA`) it measured lower on both
data sets at keep 0.3 and 0.2 (the `sgd` ablation in that file: by 0.5-0.9 points, 3 seeds; the
interval excludes 0 at digits keep 0.3 only). With `cost_weighted` the
penalty charges each gate by the parameters its unit removes (relative to the average unit),
which helped at very low keep ratios but pruned the costly residual channels first and hurt at
high ones (digits, keep 0.8: -3.6 points), so it is off by default.
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeprune.devices import Precision, model_device
from edgeprune.errors import InputError, RunError
from edgeprune.fileio import write_bytes_atomic
from edgeprune.analysis.graph import ChannelGraph
from edgeprune.progress import ProgressCallback, report
from edgeprune.shrink import gated, num_units


@dataclass(frozen=True)
class GateConfig:
    max_epochs: int = 1
    lr: float = 0.02
    l1: float = 4.0  # weight of the cost-weighted mean |gate| in the loss, after the ramp
    cost_weighted: bool = False  # charge each gate by its unit's parameter cost (mean 1)
    weights: str = "frozen"  # "frozen" or "joint"
    weight_lr: float = 0.005
    batch_size: int = 128
    stable_fraction: float = 0.02  # stop when fewer units than this change half (top/bottom)
    max_batches_per_epoch: int | None = None
    seed: int = 0
    #: Learn for this keep ratio: only the units ranked below the budget's cut (by parameter cost)
    #: are penalised each step, so units compete for the budget instead of all shrinking. None:
    #: the generic L1 on every gate (scores reusable across keep ratios).
    budget_keep: float | None = None
    #: "adam" moves every gate by about `lr` a step whatever its gradient's size; "sgd" (momentum
    #: 0.9) keeps the gradients' relative sizes, so the ranking follows how much each unit matters.
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.budget_keep is not None and not 0.0 < self.budget_keep <= 1.0:
            raise InputError(f"gate budget_keep must be in (0, 1], got {self.budget_keep}")
        if self.max_epochs < 1:
            raise InputError(f"gate epochs must be >= 1, got {self.max_epochs}")
        if self.weights not in ("frozen", "joint"):
            raise InputError(f"gate weights must be 'frozen' or 'joint', got {self.weights!r}")
        if self.l1 < 0 or self.lr <= 0:
            raise InputError("gate l1 must be >= 0 and lr > 0")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"gate optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GateConfig":
        return cls(**data)


@dataclass(frozen=True)
class GateResult:
    """Learned gate values (one per unit, groups in graph order) and how they were obtained."""

    gates: torch.Tensor
    epochs_run: int
    stopped_early: bool
    history: tuple[dict, ...]
    seconds: float


def split_by_group(graph: ChannelGraph, values: torch.Tensor | np.ndarray) -> dict[int, np.ndarray]:
    """Per-unit values, flat over all groups, as {group id: array of that group's units}."""
    flat = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if flat.shape != (num_units(graph),):
        raise InputError(
            f"gate file holds {flat.size} values but the model has {num_units(graph)} prunable units; "
            "the gates were learned for another model: re-run the gate phase"
        )
    out, offset = {}, 0
    for group in graph.groups:
        out[group.id] = flat[offset: offset + group.size]
        offset += group.size
    return out


def unit_costs(model: nn.Module, graph: ChannelGraph) -> torch.Tensor:
    """Parameters removed with each unit alone, divided by the mean over units (so mean 1)."""
    from edgeprune.plan import build_cost_model

    cost = build_cost_model(model, graph)
    kept = np.ones(cost.num_units, dtype=bool)
    full = cost.sizes(kept)[0]
    removed = np.empty(cost.num_units, dtype=np.float64)
    for unit in range(cost.num_units):
        kept[unit] = False
        removed[unit] = full - cost.sizes(kept)[0]
        kept[unit] = True
    mean = removed.mean() if removed.size else 1.0
    return torch.from_numpy(removed / mean if mean > 0 else np.ones_like(removed)).float()


def below_budget(gates: torch.Tensor, costs: torch.Tensor, keep: float) -> torch.Tensor:
    """1.0 for the units a plan to `keep` of the parameters would drop if it cut at the current
    gates (largest |gate| kept first, each unit charged its parameter cost), 0.0 for the rest."""
    order = gates.abs().argsort(descending=True)
    kept_cost = torch.cumsum(costs[order], dim=0)
    dropped = torch.zeros_like(gates)
    dropped[order[kept_cost > keep * costs.sum()]] = 1.0
    return dropped


def _top_half(gates: torch.Tensor) -> torch.Tensor:
    order = gates.abs().argsort(descending=True)
    mask = torch.zeros_like(gates, dtype=torch.bool)
    mask[order[: gates.numel() // 2]] = True
    return mask


def learn_gates(
    model: nn.Module,
    graph: ChannelGraph,
    train_set: Dataset,
    config: GateConfig = GateConfig(),
    progress: ProgressCallback | None = None,
) -> GateResult:
    """Train the gates (and optionally the weights); the model is left as it was when frozen.

    Seeded from `config.seed` on a private copy of torch's RNG: the caller's global RNG state is
    left as it was.
    """
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _learn_gates(model, graph, train_set, config, progress)


def _learn_gates(model: nn.Module, graph: ChannelGraph, train_set: Dataset, config: GateConfig,
                 progress: ProgressCallback | None) -> GateResult:
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator)
    steps_per_epoch = len(loader) if config.max_batches_per_epoch is None else min(len(loader), config.max_batches_per_epoch)
    device = model_device(model)
    precision = Precision.for_device(device)
    scaler = precision.grad_scaler()
    gates = nn.Parameter(torch.ones(num_units(graph), device=device))
    costs = unit_costs(model, graph).to(device)
    price = costs if config.cost_weighted else torch.ones(num_units(graph), device=device)
    groups = [{"params": [gates], "lr": config.lr}]
    frozen = config.weights == "frozen"
    saved_requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()  # BN statistics stay those of the dense model
    else:
        groups.append({"params": [p for p in model.parameters()], "lr": config.weight_lr})
        model.train()
    optimizer = torch.optim.Adam(groups) if config.optimizer == "adam" else torch.optim.SGD(groups, momentum=0.9)
    history: list[dict] = []
    previous = _top_half(gates.detach())
    stopped_early = False
    total_steps = steps_per_epoch * config.max_epochs
    step = 0
    epoch = 0
    try:
        with gated(model, graph, gates):
            for epoch in range(1, config.max_epochs + 1):
                loss_sum, seen = 0.0, 0
                for batch, (images, labels) in enumerate(loader):
                    if batch >= steps_per_epoch:
                        break
                    ramp = min(1.0, (step + 1) / steps_per_epoch)
                    images, labels = precision.batch(images), labels.to(device)
                    with precision.autocast():
                        logits = model(images)
                        penalised = price if config.budget_keep is None else \
                            price * below_budget(gates.detach(), costs, config.budget_keep)
                        loss = F.cross_entropy(logits, labels) + config.l1 * ramp * (penalised * gates.abs()).mean()
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                    loss_sum += float(loss.detach()) * len(labels)
                    seen += len(labels)
                    step += 1
                    report(progress, "learning gates", step, total_steps)
                current = _top_half(gates.detach())
                changed = float((current != previous).float().mean())
                previous = current
                history.append({"epoch": epoch, "loss": loss_sum / max(seen, 1), "rank_change": changed,
                                "mean_abs_gate": float(gates.detach().abs().mean())})
                if epoch > 1 and changed < config.stable_fraction:
                    stopped_early = epoch < config.max_epochs
                    break
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved_requires_grad[name])
    report(progress, "learning gates", total_steps, total_steps)
    return GateResult(gates.detach().cpu().clone(), epoch, stopped_early, tuple(history), time.perf_counter() - start)


def gates_to_fold(gates: torch.Tensor | None, config: GateConfig) -> torch.Tensor | None:
    """The gate values the shrunk weights should absorb: only when the weights learned with them.

    After a frozen-weight gate phase the gates are importance scores; the weights never adapted
    to them, so folding small kept gates in would weaken exactly the channels the plan kept
    (measured: benchmarks/results/compare_criteria.md). After a joint phase the weights expect
    gated inputs, and folding keeps the shrunk model equal to the trained gated model.
    """
    return gates if gates is not None and config.weights == "joint" else None



def read_saved_gates(path: Path) -> tuple[torch.Tensor, GateConfig | None] | None:
    """The gates saved at `path` and the config they were learned with (None when it is not
    recorded in a form this version reads); None when there is no file.

    The one reader of a run's gates.pt. Raises `RunError` for a file that cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many unrelated types for a bad file
        raise RunError(f"{path} is corrupt ({type(error).__name__}); delete it to learn the gates again") from error
    gates = saved.get("gates") if isinstance(saved, dict) else saved
    if not isinstance(gates, torch.Tensor):
        raise RunError(f"{path} holds no gate tensor; delete it to learn the gates again")
    config = None
    if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
        try:
            config = GateConfig.from_dict(saved["config"])
        except (TypeError, InputError):  # written by another version: the gates are relearned
            config = None
    return gates.detach().float().reshape(-1), config


def load_or_learn_gates(
    path: Path | None,
    model: nn.Module,
    graph: ChannelGraph,
    train_set: Dataset,
    config: GateConfig,
    progress: ProgressCallback | None = None,
) -> tuple[torch.Tensor, bool]:
    """The gates saved at `path` when they were learned for this graph with `config`; otherwise
    learn them (and save them at `path`, atomically). Returns (gates, whether they were learned now).

    Scores are reused across keep ratios and commands, which is what makes a sweep affordable; a
    changed gate config or model invalidates them.
    """
    saved = read_saved_gates(path) if path is not None else None
    if saved is not None and saved[1] == config and saved[0].numel() == num_units(graph):
        return saved[0], False
    result = learn_gates(model, graph, train_set, config, progress)
    if path is not None:
        buffer = io.BytesIO()
        torch.save({"gates": result.gates, "epochs_run": result.epochs_run, "config": config.to_dict(),
                    "history": list(result.history), "seconds": result.seconds}, buffer)
        write_bytes_atomic(path, buffer.getvalue())
    return result.gates, True
