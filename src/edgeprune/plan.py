"""Global top-K over channel groups so that the pruned model meets the budget exactly.

`--keep` is the fraction of parameters (or FLOPs) that remains. Parameters and FLOPs after
pruning are *computed*, not estimated: every prunable parameter's size after pruning is the
product of the kept counts along its sliced axes, and conv/linear FLOPs are weight elements times
output positions (what torch.utils.flop_counter counts). The plan rounds each group to multiples
of `round_to` channels and then nudges single groups up or down until the budget is met within
`tolerance`. When those small moves stall short of it (few groups, coarse rounding), a wider
search sets one group to any allowed count and solves another for the budget (every combination,
when there are few enough); when rounding makes the budget impossible, the closest plan is
returned with a note.

With `--budget latency` the keep is a fraction of the target's latency: the caller passes a
latency predictor (per-layer tables measured on the target, see `edgeprune.latency`) and the
planner that spends it; for params and FLOPs budgets a predictor, when given, breaks ties
between plans of the same size in favour of the faster one.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np
from scipy import sparse
from torch import nn

from edgeprune.errors import InputError
from edgeprune.analysis.graph import FROZEN, ChannelGraph

PLAN_SCHEMA_VERSION = 1
BUDGETS = ("params", "flops", "latency")
_FROZEN_PARTS_KEPT = 20  # plan.json lists this many of the largest frozen parts; `inspect` shows all


@dataclass(frozen=True)
class PlanConfig:
    """What the user asked for. Validated here so every caller gets the same errors."""

    keep: float
    budget: str = "params"
    round_to: int = 8
    min_channels: int = 8
    tolerance: float = 0.005
    #: Per-group score normalisation before the global ranking; "auto" is `normalization_for(criterion)`.
    normalize: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.keep, (int, float)) or math.isnan(self.keep) or not 0.0 < self.keep <= 1.0:
            raise InputError(f"--keep must be in (0, 1], got {self.keep}; e.g. --keep 0.5 keeps half the parameters")
        if self.budget not in BUDGETS:
            raise InputError(f"--budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if self.round_to < 1:
            raise InputError(f"--round-to must be >= 1, got {self.round_to}")
        if self.min_channels < 1:
            raise InputError(f"--min-channels must be >= 1, got {self.min_channels}")
        if self.normalize not in ("auto", "mean", "max", "none"):
            raise InputError(f"normalize must be auto, mean, max or none, got {self.normalize!r}")


@dataclass(frozen=True)
class GroupPlan:
    id: int
    name: str
    channels_before: int
    channels_after: int
    kept_units: tuple[int, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "kept_units": list(self.kept_units)}


@dataclass(frozen=True)
class PrunePlan:
    """Which units of which groups stay, and what that costs. The single source of truth."""

    keep_requested: float
    keep_achieved: float
    budget: str
    round_to: int
    min_channels: int
    criterion: str
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    groups: tuple[GroupPlan, ...]
    input_shape: tuple[int, ...]
    ignore: tuple[str, ...] = ()
    note: str = ""
    frozen_fraction: float = 0.0  # share of the parameters in channels the analysis froze
    frozen_params: tuple[dict, ...] = ()  # the largest frozen parts: where, op, reason, params
    opaque_modules: tuple[tuple[str, str], ...] = ()  # (module path, why) kept whole and unpruned
    latency_before_ms: Optional[float] = None  # predicted from the target's latency table, when one was used
    latency_after_ms: Optional[float] = None
    schema_version: int = PLAN_SCHEMA_VERSION

    def kept_mask(self, graph: ChannelGraph) -> np.ndarray:
        """Boolean per class id: True where the class stays (frozen classes always stay)."""
        kept = np.zeros(len(graph.class_of_label), dtype=bool)
        kept[FROZEN] = True
        for gp in self.groups:
            units = graph.groups[gp.id].units
            kept[[units[u] for u in gp.kept_units]] = True
        return kept

    def to_dict(self) -> dict:
        data = asdict(self)
        data["groups"] = [g.to_dict() for g in self.groups]
        data["input_shape"] = list(self.input_shape)
        data["ignore"] = list(self.ignore)
        data["frozen_params"] = [dict(f) for f in self.frozen_params]
        data["opaque_modules"] = dict(self.opaque_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PrunePlan":
        if data.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise InputError(
                f"plan.json has schema_version {data.get('schema_version')!r}, this edgeprune reads "
                f"{PLAN_SCHEMA_VERSION}; re-run `edgeprune prune`"
            )
        fields = dict(data)
        fields["groups"] = tuple(
            GroupPlan(g["id"], g["name"], g["channels_before"], g["channels_after"], tuple(g["kept_units"]))
            for g in data["groups"]
        )
        fields["input_shape"] = tuple(data["input_shape"])
        fields["ignore"] = tuple(data.get("ignore", ()))
        fields["frozen_params"] = tuple(dict(f) for f in data.get("frozen_params", ()))
        fields["opaque_modules"] = tuple((str(k), str(v)) for k, v in data.get("opaque_modules", {}).items())
        return cls(**fields)


@dataclass
class CostModel:
    """Parameters and FLOPs of the model as a function of which units are kept."""

    unit_offsets: np.ndarray
    slice_matrix: sparse.csr_matrix  # (slices, units): how many positions of a slice each unit holds
    slice_frozen: np.ndarray  # positions of each slice that are frozen (always kept)
    tensors: list[tuple[str, tuple[int, ...], dict[int, int], bool]] = field(default_factory=list)
    fixed_params: int = 0
    fixed_flops: int = 0
    flop_weights: dict[str, int] = field(default_factory=dict)

    @property
    def num_units(self) -> int:
        return int(self.unit_offsets[-1])

    def counts(self, kept_units: np.ndarray) -> np.ndarray:
        return self.slice_frozen + self.slice_matrix @ kept_units.astype(np.int64)

    def __post_init__(self) -> None:
        rank = max((len(shape) for _, shape, _, _ in self.tensors), default=1)
        self._slice_index = np.full((len(self.tensors), rank), -1, dtype=np.int64)
        self._static = np.ones((len(self.tensors), rank), dtype=np.int64)
        for t, (_, shape, axis_slice, _) in enumerate(self.tensors):
            self._static[t, : len(shape)] = shape
            for axis, row in axis_slice.items():
                self._slice_index[t, axis] = row
        self._is_param = np.array([not b for *_, b in self.tensors], dtype=np.int64)
        self._flop_weight = np.array([2 * self.flop_weights.get(n, 0) for n, *_ in self.tensors], dtype=np.int64)

    def sizes(self, kept_units: np.ndarray) -> tuple[int, int]:
        """(params, flops) when `kept_units` (0/1 per global unit) are kept."""
        counts = self.counts(kept_units)
        dims = np.where(self._slice_index >= 0, counts[np.maximum(self._slice_index, 0)], self._static)
        numel = dims.prod(axis=1)
        params = self.fixed_params + int(numel @ self._is_param)
        flops = self.fixed_flops + int(numel @ self._flop_weight)
        return params, flops


def build_cost_model(model: nn.Module, graph: ChannelGraph, flops_measured: int | None = None) -> CostModel:
    """Index every sliced tensor axis by the units it holds; the rest is a fixed cost."""
    offsets = np.cumsum([0] + [g.size for g in graph.groups]).astype(np.int64)
    unit_of_class = np.full(len(graph.class_of_label), -1, dtype=np.int64)
    for cls, (g, u) in graph.unit_index.items():
        unit_of_class[cls] = offsets[g] + u
    tensors_by_name: dict[str, dict[int, int]] = {}
    rows, cols, frozen = [], [], []
    for row, s in enumerate(graph.slices):
        units = unit_of_class[graph.class_of_label[s.labels]]
        frozen.append(int((units < 0).sum()))
        used, counts = np.unique(units[units >= 0], return_counts=True)
        rows.extend([row] * used.size)
        cols.extend(zip(used.tolist(), counts.tolist()))
        tensors_by_name.setdefault(s.name, {})[s.axis] = row
    data = [c for _, c in cols]
    matrix = sparse.csr_matrix(
        (data, (rows, [u for u, _ in cols])), shape=(len(graph.slices), int(offsets[-1]))
    )
    state = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    tensors = []
    for name, axis_slice in tensors_by_name.items():
        tensor = state.get(name, buffers.get(name))
        tensors.append((name, tuple(tensor.shape), axis_slice, name not in state))
    sliced = set(tensors_by_name)
    fixed_params = sum(state[n].numel() for n in graph.traced_params if n not in sliced)
    cost = CostModel(offsets, matrix, np.array(frozen, dtype=np.int64), tensors, fixed_params, 0, dict(graph.flop_weights))
    for name, positions in graph.flop_weights.items():
        if name not in sliced:
            cost.fixed_flops += 2 * positions * state[name].numel()
    if flops_measured is not None:
        _, predicted = cost.sizes(np.ones(cost.num_units, dtype=bool))
        cost.fixed_flops += flops_measured - predicted  # ops outside conv/linear, counted as fixed
    return cost


#: Predicted latency (ms) of a kept-unit mask (bool per global unit), e.g. `latency.LatencyPredictor`.
LatencyModel = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class PlanProblem:
    """What a planner chooses from: per group, the allowed kept-unit counts and the units in the
    order they are kept (best first) with their normalised importance in that order."""

    cost: CostModel
    allowed: tuple[np.ndarray, ...]
    order_in_group: tuple[np.ndarray, ...]
    values_in_order: tuple[np.ndarray, ...]
    unit_offsets: np.ndarray

    def kept_for(self, counts_per_group) -> np.ndarray:
        kept = np.zeros(self.cost.num_units, dtype=bool)
        for g, k in enumerate(counts_per_group):
            kept[self.unit_offsets[g] + self.order_in_group[g][: int(k)]] = True
        return kept

    def importance(self, counts_per_group) -> float:
        return float(sum(v[: int(k)].sum() for v, k in zip(self.values_in_order, counts_per_group)))


#: Chooses kept-unit counts per group so that the predicted latency is `keep` of the dense one.
LatencyPlanner = Callable[[PlanProblem, LatencyModel, float], list[int]]


def _allowed_counts(size: int, unit_width: int, config: PlanConfig, minimum: int = 1) -> np.ndarray:
    step = config.round_to // math.gcd(config.round_to, unit_width)
    min_units = min(size, max(minimum, math.ceil(config.min_channels / unit_width)))
    min_units = min(size, step * math.ceil(min_units / step))
    counts = set(range(min_units, size + 1, step)) | {size}
    return np.array(sorted(counts), dtype=np.int64)


#: What a plan's note says when the smallest channel counts allowed stop it short of the budget
#: (the latency notes built on a plan's note look for it).
FLOOR_BOUND = "the smallest channel counts allowed by --round-to and --min-channels bound it"


#: Criteria whose scores share one scale across groups by construction: every gate starts at 1
#: and moves under one optimiser and one penalty, so a layer whose gates all sank is a layer that
#: matters less. Dividing each group by its mean would erase exactly that.
SHARED_SCALE_CRITERIA = ("gate",)


def normalization_for(criterion: str) -> str:
    """Per-group normalisation of a criterion's scores: none where they share one scale, else the
    group mean (weight magnitudes, BN scales and saliencies differ by layer in size, not only in worth)."""
    return "none" if criterion in SHARED_SCALE_CRITERIA else "mean"


def _normalize(scores: np.ndarray, how: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if how == "none" or scores.size == 0:
        return scores
    scale = scores.mean() if how == "mean" else scores.max()
    return scores / scale if scale > 0 else np.ones_like(scores)


def make_plan(
    model: nn.Module,
    graph: ChannelGraph,
    scores: dict[int, np.ndarray],
    config: PlanConfig,
    *,
    criterion: str = "custom",
    ignore: tuple[str, ...] = (),
    flops_measured: int | None = None,
    latency: Optional[LatencyModel] = None,
    latency_planner: Optional[LatencyPlanner] = None,
) -> PrunePlan:
    """Choose the kept units of every group so that the budget is met (see module docstring).
    `criterion` names where the scores came from (recorded, and it picks the normalisation); scores
    of unnamed origin ("custom") are compared relative to their group's mean."""
    if config.budget == "latency" and (latency is None or latency_planner is None):
        raise InputError("--budget latency needs a latency table measured on the target: plan through "
                         "`edgeprune export/prune --budget latency --target NAME`, which builds one")
    cost = build_cost_model(model, graph, flops_measured)
    all_kept = np.ones(cost.num_units, dtype=bool)
    params_before, flops_before = cost.sizes(all_kept)
    measure = 0 if config.budget == "params" else 1
    total = (params_before, flops_before)[measure]
    values_in_order = []

    for group in graph.groups:
        shape = np.shape(scores[group.id])
        if shape != (group.size,):
            raise InputError(f"scores for group {group.name} have shape {shape}, expected ({group.size},)")
    protected = _protected_units(graph, scores)
    normalization = normalization_for(criterion) if config.normalize == "auto" else config.normalize
    order_in_group = []  # per group: unit indices sorted by score, best first
    allowed = []
    ranked: list[tuple[float, int]] = []  # (normalised score, group) for the global ranking
    for group in graph.groups:
        raw = np.asarray(scores[group.id], dtype=np.float64)
        if raw.shape != (group.size,):
            raise InputError(f"scores for group {group.name} have shape {raw.shape}, expected ({group.size},)")
        order = np.argsort(-raw, kind="stable")
        must = protected.get(group.id, [])
        if must:  # each layer's best unit first, so no layer loses all of its channels
            must = sorted(must, key=lambda u: (-raw[u], u))
            order = np.concatenate([np.array(must, dtype=np.int64), order[~np.isin(order, must)]])
        order_in_group.append(order)
        allowed.append(_allowed_counts(group.size, group.unit_width, config, minimum=len(must)))
        normalised = _normalize(raw, normalization)
        values_in_order.append(normalised[order])
        ranked.extend((float(normalised[u]), group.id) for u in order)
    ranked.sort(key=lambda item: -item[0])
    problem = PlanProblem(cost, tuple(allowed), tuple(order_in_group), tuple(values_in_order), cost.unit_offsets)

    def kept_for(counts_per_group: list[int]) -> np.ndarray:
        kept = np.zeros(cost.num_units, dtype=bool)
        for group, k in zip(graph.groups, counts_per_group):
            kept[cost.unit_offsets[group.id] + order_in_group[group.id][:k]] = True
        return kept

    def round_up(group_id: int, k: int) -> int:
        options = allowed[group_id]
        return int(options[min(np.searchsorted(options, k), options.size - 1)])

    def counts_at(top: int) -> list[int]:
        raw_counts = [0] * len(graph.groups)
        for _, group_id in ranked[:top]:
            raw_counts[group_id] += 1
        return [round_up(g, k) for g, k in enumerate(raw_counts)]

    def fraction(counts_per_group: list[int]) -> float:
        return cost.sizes(kept_for(counts_per_group))[measure] / total

    if config.budget == "latency":
        best = [int(k) for k in latency_planner(problem, latency, config.keep)]
        dense_ms = latency(all_kept)
        fraction = lambda counts: latency(kept_for(counts)) / dense_ms  # noqa: E731
    else:
        lo, hi = 0, len(ranked)
        while lo < hi:  # smallest prefix of the ranking whose rounded plan meets the budget
            mid = (lo + hi) // 2
            if fraction(counts_at(mid)) >= config.keep:
                hi = mid
            else:
                lo = mid + 1
        candidates = [counts_at(lo)] + ([counts_at(lo - 1)] if lo > 0 else [])
        best = min(candidates, key=lambda c: abs(fraction(c) - config.keep))
        best = _refine(best, allowed, fraction, config)
        if abs(fraction(best) - config.keep) > config.tolerance:
            best = _search_wider(best, allowed, fraction, problem.importance, config)
        if latency is not None:
            best = _prefer_faster(best, allowed, fraction, lambda c: latency(kept_for(c)), config)

    kept = kept_for(best)
    params_after, flops_after = cost.sizes(kept)
    achieved = fraction(best) if config.budget == "latency" else (params_after, flops_after)[measure] / total
    note = ""
    if config.budget == "latency":
        if abs(achieved - config.keep) > config.tolerance:
            at_floor = achieved > config.keep and all(int(k) == int(a[0]) for k, a in zip(best, allowed))
            note = (f"closest predicted latency keep found is {achieved:.4f} (asked {config.keep:.4f})"
                    + (f"; {FLOOR_BOUND}"
                       if at_floor else ""))
    elif abs(achieved - config.keep) > config.tolerance:
        floor = fraction([int(a[0]) for a in allowed])
        note = (
            f"closest {config.budget} keep found is {achieved:.4f} (asked {config.keep:.4f}): "
            f"channel counts are rounded to multiples of {config.round_to} with at least "
            f"{config.min_channels} per group, so the smallest possible keep is {floor:.3f}; "
            "lower --round-to or --min-channels to get closer"
        )
    group_plans = tuple(
        GroupPlan(
            g.id, g.name, g.channels, round(g.channels * int(k) / g.size),
            tuple(sorted(int(u) for u in order_in_group[g.id][: int(k)])),
        )
        for g, k in zip(graph.groups, best)
    )
    return PrunePlan(
        keep_requested=float(config.keep),
        keep_achieved=float(achieved),
        budget=config.budget,
        round_to=config.round_to,
        min_channels=config.min_channels,
        criterion=criterion,
        params_before=int(params_before),
        params_after=int(params_after),
        flops_before=int(flops_before),
        flops_after=int(flops_after),
        groups=group_plans,
        input_shape=tuple(graph.input_shape),
        ignore=tuple(ignore),
        note=note,
        frozen_fraction=float(graph.frozen_fraction),
        frozen_params=tuple(f.to_dict() for f in graph.frozen_params[:_FROZEN_PARTS_KEPT]),
        opaque_modules=tuple(graph.opaque_modules.items()),
        latency_before_ms=None if latency is None else float(latency(all_kept)),
        latency_after_ms=None if latency is None else float(latency(kept)),
    )


def _prefer_faster(counts: list[int], allowed: list[np.ndarray], fraction, latency_of, config: PlanConfig,
                   max_swaps: int = 32) -> list[int]:
    """Among plans that meet the budget as closely, the faster: swap one rounding step from one
    group to another while the budget stays within tolerance and the predicted latency drops.

    Each candidate swap is estimated from single-group moves (2 evaluations per group), then
    checked exactly before it is taken, so the cost stays linear in the number of groups.
    """
    counts = list(counts)
    if abs(fraction(counts) - config.keep) > config.tolerance:
        return counts

    def moved(g: int, direction: int) -> list[int] | None:
        j = int(np.searchsorted(allowed[g], counts[g])) + direction
        if not 0 <= j < allowed[g].size:
            return None
        trial = counts.copy()
        trial[g] = int(allowed[g][j])
        return trial

    for _ in range(max_swaps):
        base_f, base_ms = fraction(counts), latency_of(counts)
        deltas = {}
        for g in range(len(allowed)):
            for d in (-1, 1):
                trial = moved(g, d)
                if trial is not None:
                    deltas[(g, d)] = (fraction(trial) - base_f, latency_of(trial) - base_ms)
        options = []
        for (a, da), (fa, ma) in deltas.items():
            if da != -1:
                continue
            for (b, db), (fb, mb) in deltas.items():
                if db == 1 and b != a and ma + mb < 0 and abs(base_f + fa + fb - config.keep) <= config.tolerance:
                    options.append((ma + mb, a, b))
        taken = False
        for _, a, b in sorted(options)[:8]:
            trial = counts.copy()
            trial[a] = moved(a, -1)[a]
            trial[b] = moved(b, 1)[b]
            if abs(fraction(trial) - config.keep) <= config.tolerance and latency_of(trial) < base_ms - 1e-9:
                counts, taken = trial, True
                break
        if not taken:
            break
    return counts


def _protected_units(graph: ChannelGraph, scores: dict[int, np.ndarray]) -> dict[int, list[int]]:
    """Per group, the best-scoring unit of every sliced tensor axis made only of that group's units.

    A group can span several layers (DenseNet's concatenated features are one group), and top-K
    over the group could otherwise remove every channel of one conv: a zero-width layer that
    cannot be built. Keeping these units first guarantees every axis keeps at least one.
    """
    offsets = np.cumsum([0] + [g.size for g in graph.groups])
    group_of_unit = np.repeat(np.arange(len(graph.groups)), [g.size for g in graph.groups])
    flat = np.concatenate([np.asarray(scores[g.id], dtype=np.float64) for g in graph.groups]) if graph.groups else np.zeros(0)
    protected: dict[int, set[int]] = {}
    seen: set[bytes] = set()
    for s in graph.slices:
        units = np.unique(graph.unit_of_class[graph.class_of_label[s.labels]])
        if units.size == 0 or units[0] < 0:
            continue  # a frozen channel always stays: the axis cannot become empty
        key = units.tobytes()
        if key in seen:
            continue
        seen.add(key)
        best = int(units[np.argmax(flat[units])])
        g = int(group_of_unit[best])
        protected.setdefault(g, set()).add(best - int(offsets[g]))
    return {g: sorted(units) for g, units in protected.items()}


def _refine(counts: list[int], allowed: list[np.ndarray], fraction, config: PlanConfig, max_steps: int = 200,
            max_pair_groups: int = 48) -> list[int]:
    """Move groups one rounding step up or down while that gets closer to the budget.

    Single-group moves first; when none helps (with coarse rounding every single step can
    overshoot), pairs of groups moving together, for models with few enough groups that the
    pairs are cheap to try (coarse steps matter most there).
    """
    counts = list(counts)
    error = fraction(counts) - config.keep

    def step_of(g: int, trial: list[int], direction: int) -> bool:
        options = allowed[g]
        j = int(np.searchsorted(options, trial[g])) + direction
        if 0 <= j < options.size:
            trial[g] = int(options[j])
            return True
        return False

    def best_of(moves) -> tuple[list[int] | None, float]:
        best_move, best_error = None, error
        for move in moves:
            trial = counts.copy()
            if all(step_of(g, trial, d) for g, d in move):
                trial_error = fraction(trial) - config.keep
                if abs(trial_error) < abs(best_error) - 1e-12:
                    best_move, best_error = trial, trial_error
        return best_move, best_error

    groups = range(len(allowed))
    for _ in range(max_steps):
        if abs(error) <= config.tolerance / 5:
            break
        move, move_error = best_of([((g, d),) for g in groups for d in (-1, 1)])
        if move is None and abs(error) > config.tolerance and len(allowed) <= max_pair_groups:
            pairs = [((a, da), (b, db)) for a in groups for b in groups if a < b for da in (-1, 1) for db in (-1, 1)]
            move, move_error = best_of(pairs)
        if move is None:
            break
        counts, error = move, move_error
    return counts


#: A wider search tries every combination of counts when there are at most this many.
_EXHAUSTIVE_PLANS = 20_000
#: ... and otherwise pairs of groups (one set to any count, the other solved), up to this many groups.
_PAIR_JUMP_GROUPS = 16


def _search_wider(counts: list[int], allowed: list[np.ndarray], fraction, importance, config: PlanConfig) -> list[int]:
    """Plans `_refine`'s single steps cannot reach: the one meeting the budget that keeps the most
    importance, else the closest to it.

    Few groups with coarse rounding leave gaps one step wide, and a local search can stall on
    the wrong side of them (a 3-conv model at round_to 4 stopped at 0.5079 for 0.5 while 38
    plans within 0.005 existed). With few combinations every one is tried; with up to
    `_PAIR_JUMP_GROUPS` groups, every group is set to every allowed count and each other group is
    solved for the budget by bisection (the fraction grows with every count).
    """
    def rank(trial: list[int]) -> tuple[bool, bool, float, float]:
        # met first, then as close as `_refine` aims (a fifth of the tolerance), then importance
        error = abs(fraction(trial) - config.keep)
        met = error <= config.tolerance
        return (not met, error > config.tolerance / 5, -importance(trial) if met else error, error)

    best, best_rank = list(counts), rank(counts)
    if math.prod(a.size for a in allowed) <= _EXHAUSTIVE_PLANS:
        candidates = (list(map(int, c)) for c in itertools.product(*allowed))
    elif len(allowed) <= _PAIR_JUMP_GROUPS:
        candidates = _pair_jumps(counts, allowed, fraction, config.keep)
    else:
        return best
    for trial in candidates:
        trial_rank = rank(trial)
        if trial_rank < best_rank:
            best, best_rank = trial, trial_rank
    return best


def _pair_jumps(counts: list[int], allowed: list[np.ndarray], fraction, keep: float):
    """Group `a` at each allowed count, group `b` at the two counts around the budget."""
    for a in range(len(allowed)):
        for count_a in allowed[a]:
            for b in range(len(allowed)):
                if b == a:
                    continue
                trial = list(counts)
                trial[a] = int(count_a)
                lo, hi = 0, allowed[b].size - 1
                while lo < hi:  # the smallest count of b that meets the budget
                    mid = (lo + hi) // 2
                    trial[b] = int(allowed[b][mid])
                    if fraction(trial) >= keep:
                        hi = mid
                    else:
                        lo = mid + 1
                for j in {lo, max(lo - 1, 0)}:
                    trial[b] = int(allowed[b][j])
                    yield list(trial)
