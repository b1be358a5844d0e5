"""ONNX export with a dynamic batch axis, and a parity check of the file against PyTorch.

The TorchScript exporter (``dynamo=False``) is tried first: in torch 2.x it honours opset 17
exactly (what TensorRT 8.5/8.6 on JetPack 5/6.0 parse) and exports a small CNN in well under a
second. Where it cannot export a model (or a future torch removes it) the torch.export-based
exporter (``dynamo=True``) is used; it may keep opset 18 when its down-conversion fails. Which one
ran is recorded in the model's ``metadata_props`` (``edgeprune.exporter``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeprune.errors import CheckFailedError, InputError, UnsupportedModelError
from edgeprune.outputs import output_tensors

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTERS = ("auto", "torchscript", "dynamo")
#: protobuf's hard limit; a CNN meant for the edge is far below it.
_MAX_PROTO_BYTES = 2 * 1024**3 - 1


@dataclass(frozen=True)
class ParityResult:
    """PyTorch vs ONNX Runtime (CPU) on one batch: the worst absolute error over every output, and
    top-1 agreement of the first."""

    max_abs_err: float
    top1_agreement: float
    n_samples: int
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(
    model: Any,
    input_shape: Sequence[int],
    path: str | Path,
    opset: int = 17,
    *,
    exporter: str = "auto",
) -> None:
    """Export `model` in eval mode to one self-contained ``.onnx`` file with a dynamic batch axis.

    `input_shape` is one sample's shape (C, H, W), without the batch. The file is checked with
    ``onnx.checker`` and written atomically: on any failure nothing is left at `path`.
    """
    import onnx
    import torch

    if exporter not in EXPORTERS:
        raise InputError(f"unknown exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise InputError(
            f"input_shape must be one sample's positive dimensions like (3, 32, 32), got {input_shape}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Batch 2, not 1: a batch of 1 lets tracing specialise the batch dimension away.
    example = torch.zeros((2, *shape), dtype=torch.float32, device=_model_device(model))

    try:
        with _eval_mode(model), torch.no_grad():
            output_names = _output_names(model(example))
    except Exception:  # a forward that fails here fails in the exporters too, which say why
        output_names = [OUTPUT_NAME]
    order = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    errors: list[str] = []
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp_dir:
        tmp_path = Path(tmp_dir) / path.name
        with _eval_mode(model), torch.no_grad():
            for name in order:
                try:
                    _EXPORT_FUNCTIONS[name](model, example, tmp_path, opset, output_names)
                    break
                except Exception as error:  # the exporters raise many unrelated types
                    errors.append(f"{name}: {_first_line(error)}")
                    tmp_path.unlink(missing_ok=True)
            else:
                raise UnsupportedModelError(
                    f"ONNX export failed ({'; '.join(errors)}); "
                    "replace the unsupported op or export with a different opset"
                )
        if len(list(Path(tmp_dir).iterdir())) != 1:
            raise UnsupportedModelError(
                "the exported model needs external data files (over 2 GB); edgeprune writes one self-contained .onnx"
            )
        proto = onnx.load(str(tmp_path))
        onnx.helper.set_model_props(proto, {**_props(proto), "edgeprune.exporter": name})
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as error:
            raise CheckFailedError(
                f"onnx.checker rejected the exported model: {_first_line(error)}"
            ) from error
        data = proto.SerializeToString()
        if len(data) > _MAX_PROTO_BYTES:
            raise UnsupportedModelError(
                "the exported model is over 2 GB; edgeprune writes one self-contained .onnx"
            )
        final_tmp = Path(tmp_dir) / "final.onnx"
        final_tmp.write_bytes(data)
        with open(final_tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(final_tmp, path)


def check_parity(model: Any, onnx_path: str | Path, images: Any, tolerance: float = 1e-4) -> ParityResult:
    """Run the same batch through `model` (eval mode) and ONNX Runtime on the CPU, and compare.

    Passing means the worst absolute logit difference is within `tolerance`. Top-1 agreement is
    reported beside it because a tie between two logits can flip a prediction within tolerance.
    """
    import onnxruntime as ort
    import torch

    batch = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim < 2 or batch.shape[0] == 0:
        raise InputError(f"check_parity needs a non-empty batch (N, C, H, W), got shape {batch.shape}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    device = _model_device(model)

    expected: list[list[np.ndarray]] = []
    actual: list[list[np.ndarray]] = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, batch.shape[0], 64):
            chunk = batch[start : start + 64]
            outputs = output_tensors(model(torch.from_numpy(chunk).to(device)))
            expected.append([t.float().cpu().numpy() for t in outputs])
            actual.append(session.run(None, {input_name: chunk}))
    if len(expected[0]) != len(actual[0]):
        raise CheckFailedError(f"the ONNX model has {len(actual[0])} outputs, PyTorch's has {len(expected[0])}")
    max_abs_err = 0.0
    for k in range(len(expected[0])):  # each output, all chunks
        reference = np.concatenate([e[k] for e in expected])
        result = np.concatenate([a[k] for a in actual]).astype(np.float32)
        if reference.shape != result.shape:
            raise CheckFailedError(f"ONNX output {k} has shape {result.shape}, PyTorch's {reference.shape}")
        if reference.size:
            max_abs_err = max(max_abs_err, float(np.max(np.abs(reference - result))))
        if k == 0:
            agreement = float(np.mean(reference.argmax(axis=-1) == result.argmax(axis=-1)))
    return ParityResult(
        max_abs_err=max_abs_err,
        top1_agreement=agreement,
        n_samples=int(batch.shape[0]),
        tolerance=float(tolerance),
        passed=bool(np.isfinite(max_abs_err) and max_abs_err <= tolerance),
    )


def _output_names(output: Any) -> list[str]:
    """`logits` for a classifier's one tensor; `output_0`, `output_1`... for dicts, lists, tuples."""
    count = len(output_tensors(output))
    return [OUTPUT_NAME] if count == 1 else [f"output_{i}" for i in range(count)]


def _export_torchscript(model: Any, example: Any, path: Path, opset: int, output_names: list[str]) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=output_names,
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
            do_constant_folding=True,
            dynamo=False,
        )


def _export_dynamo(model: Any, example: Any, path: Path, opset: int, output_names: list[str]) -> None:
    import onnx
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            input_names=[INPUT_NAME],
            output_names=output_names,
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    onnx.save_model(program.model_proto, str(path))


_EXPORT_FUNCTIONS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


@contextlib.contextmanager
def _eval_mode(model: Any):
    """Eval mode for the duration, then restore whatever mode the caller had."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model: Any):
    import torch

    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _props(proto: Any) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


__all__ = ["INPUT_NAME", "OUTPUT_NAME", "ParityResult", "check_parity", "export_onnx"]
