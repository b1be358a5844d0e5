"""A profiler whose layer latency is a known function of the channels, for the latency tests."""
from __future__ import annotations

from edgeprune.latency.profile import LayerProfiler
from edgeprune.latency.table import Fingerprint
from edgeprune.targets import load_target


def staircase_ms(spec) -> float:
    """cin x cout work, doubling above 64 output channels (a kernel falling off its fast path)."""
    work = 0.01 + 1e-5 * spec.cin * spec.cout * (spec.spatial[0] if spec.spatial else 1)
    return work * (2.0 if spec.cout > 64 else 1.0)


class FakeProfiler(LayerProfiler):
    """Times nothing: `time` returns `latency(spec)` and counts how many points were asked for."""

    def __init__(self, machine: str = "fake cpu", latency=staircase_ms) -> None:
        super().__init__(load_target("cpu-x86"))
        self.machine, self.latency, self.timed, self.keys = machine, latency, 0, set()

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.machine, 2, "onnxruntime", "0.0", ("CPUExecutionProvider",), 0, 1, "fp32", "all")

    def layer_runner(self, spec):
        return spec

    def model_runner(self, onnx_path, input_shape):
        return "model"

    def time(self, runners):
        self.timed += sum(1 for r in runners if r != "model")
        self.keys |= {r.key for r in runners if r != "model"}
        return [10.0 if r == "model" else self.latency(r) for r in runners]
