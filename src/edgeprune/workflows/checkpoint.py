"""A pruned model on disk: `plan.json` plus `model.safetensors`, and how to load it back.

Nothing is unpickled: the shrunk model is rebuilt from the original architecture (the model
spec), re-analysed at the plan's input shape and shrunk with the plan's kept units, and only
then are the saved tensors loaded into it. The weights file's sha256 is recorded in the plan, so
a plan and weights that do not belong together are refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from edgeprune.errors import InputError, OutputExistsError
from edgeprune.fileio import read_json_object

if TYPE_CHECKING:
    from edgeprune.analysis.graph import ChannelGraph
    from edgeprune.plan import PrunePlan
    from edgeprune.workflows.prune import PruneResult

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"


def save_pruned(out_dir: str | Path, result: "PruneResult", model_spec: str, num_classes: int, *, force: bool = False) -> Path:
    """Write OUT/model.safetensors then OUT/plan.json, each atomically; returns OUT.

    An existing OUT is refused (OutputExistsError) unless `force`. plan.json is written last, so
    a folder with a plan always has the weights that the plan names.
    """
    from safetensors.torch import save

    from edgeprune.fileio import sha256_file, write_bytes_atomic, write_json_atomic

    out = Path(out_dir)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to overwrite it or choose another -o")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder; choose another -o")
    state = {name: value.detach().cpu().contiguous().clone() for name, value in result.model.state_dict().items()}
    write_bytes_atomic(out / WEIGHTS_FILE, save(state, metadata={"format": "pt", "model": model_spec}))
    document = {
        **result.plan.to_dict(),
        "model": model_spec,
        "num_classes": int(num_classes),
        "shrink_check": {"max_abs_diff": result.shrink_max_diff, "tolerance": result.shrink_tolerance},
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(out / WEIGHTS_FILE)},
    }
    write_json_atomic(out / PLAN_FILE, document)
    return out


def read_plan(out_dir: str | Path) -> tuple["PrunePlan", dict]:
    """(PrunePlan, the whole plan.json document) of a pruned folder, with clear errors."""
    from edgeprune.plan import PrunePlan

    path = Path(out_dir) / PLAN_FILE
    document = read_json_object(path, InputError, "point at a folder written by `edgeprune prune`, or re-run it")
    fields = {k: v for k, v in document.items() if k not in ("model", "num_classes", "shrink_check", "weights")}
    try:
        plan = PrunePlan.from_dict(fields)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path} is not a valid edgeprune plan ({type(error).__name__}: {error}); re-run `edgeprune prune`") from error
    return plan, document


def load(model_spec: str | nn.Module | None, out_dir: str | Path, num_classes: int | None = None) -> nn.Module:
    """The shrunk model saved in `out_dir`, in eval mode.

    `model_spec` (None: the one recorded in plan.json) builds the original architecture, or is
    that architecture as an `nn.Module` (modified in place: pass a copy); it is analysed at the
    plan's input shape, shrunk with the plan, and given the saved weights.
    """
    out = Path(out_dir)
    plan, document = read_plan(out)
    if isinstance(model_spec, nn.Module):
        return _load_into(model_spec, type(model_spec).__name__, plan, out, document)
    spec = model_spec if model_spec is not None else document.get("model")
    if not isinstance(spec, str) or not spec or spec.startswith("python:"):
        raise InputError(f"{out / PLAN_FILE} names no model spec edgeprune can build ({spec!r}); "
                         "pass the model spec, or the dense nn.Module to edgeprune.load")
    classes = num_classes if num_classes is not None else document.get("num_classes")
    if not isinstance(classes, int) or classes < 1:
        raise InputError(f"{out / PLAN_FILE} has no valid num_classes; pass num_classes")
    return _load_into(_build_model(spec, classes, tuple(plan.input_shape)), spec, plan, out, document)


def _load_into(model: nn.Module, spec: str, plan: "PrunePlan", out: Path, document: dict) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from edgeprune.analysis.graph import analyze
    from edgeprune.fileio import sha256_file
    from edgeprune.shrink import shrink
    from edgeprune.workflows.prune import example_input

    weights = out / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights} not found; the pruned folder is incomplete: re-run `edgeprune prune`")
    expected_sha = (document.get("weights") or {}).get("sha256")
    if expected_sha is not None and sha256_file(weights) != expected_sha:
        raise InputError(f"{weights} does not match the sha256 recorded in {PLAN_FILE}; re-run `edgeprune prune`")

    model = model.cpu().eval()
    graph = analyze(model, example_input(plan.input_shape), ignore=plan.ignore)
    _check_plan_fits(plan, graph, out / PLAN_FILE, spec)
    shrunk = shrink(model, graph, plan)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{weights} cannot be read ({error}); re-run `edgeprune prune`") from error
    try:
        shrunk.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise InputError(
            f"{weights} does not fit {spec} shrunk with {PLAN_FILE} ({first[1].strip() if len(first) > 1 else first[0]}); "
            "was the folder written for another model or num_classes?"
        ) from error
    return shrunk.eval()


def _check_plan_fits(plan: "PrunePlan", graph: "ChannelGraph", path: Path, spec: str) -> None:
    mismatch = f"{path} was made for another model than {spec} at input {tuple(plan.input_shape)}"
    if len(plan.groups) != len(graph.groups):
        raise InputError(f"{mismatch}: it has {len(plan.groups)} channel groups, the model has {len(graph.groups)}")
    for gp, group in zip(plan.groups, graph.groups):
        if gp.channels_before != group.channels or any(not 0 <= u < group.size for u in gp.kept_units):
            raise InputError(f"{mismatch}: group {gp.id} ({gp.name}) does not match {group.name}")


def _build_model(spec: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    from edgeprune.training.models import build_model

    return build_model(spec, num_classes, input_shape=input_shape)
