"""A strict fake of the TensorRT Python API (builder, parser, runtime, engine, execution context).

It rejects what the real API rejects, where edgeprune could get it wrong without a GPU to tell:
``IOptimizationProfile.set_shape`` takes exactly (name, min, opt, max) with min <= opt <= max;
network creation flags must exist in that version (TensorRT 11 has no EXPLICIT_BATCH);
``build_serialized_network`` returns a host-memory object (not ``bytes``) or None; DLA accepts
only static profiles (min = opt = max) and a DLA engine loads only on a runtime whose
``DLA_core`` is set; the process keeps its first logger, so later loggers hear nothing; an
execution context needs its profile, input shape and every tensor address before
``execute_async_v3``, and its output is written only when the stream is synchronised.

A "plan" is JSON describing the engine, so the fake runtime can deserialise what the fake
builder built. The engine computes ``logits[n, k] = (k + 1) * sum(x[n])``.
"""
from __future__ import annotations

import ctypes
import json
import types
from enum import IntEnum
from itertools import count

import numpy as np
import torch

NUM_CLASSES = 10


class Severity(IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class HostMemory(bytearray):
    """IHostMemory stands in for a buffer; it is not ``bytes``."""

    @property
    def nbytes(self) -> int:
        return len(self)


def make_fake_trt(version: str = "10.3.0", *, weak_typing: bool = True, dla_cores: int = 0,
                  parser_errors: tuple[str, ...] = (), build_error: str | None = None,
                  non_dla_layers: tuple[str, ...] = ("fc",)) -> types.ModuleType:
    """A fake ``tensorrt`` module; its `calls` record what the code under test asked for."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = {"flags": [], "profiles": [], "parsed": None}
    trt.pending = pending = {}  # stream handle -> work enqueued by execute_async_v3
    trt.build_error = build_error  # set later to make the next build fail with this message
    state = {"logger": None}
    major = int(version.split(".")[0])

    class ILogger:
        Severity = Severity

        def __init__(self):
            pass

    def adopt(logger):
        if not isinstance(logger, ILogger):
            raise TypeError("expected a tensorrt.ILogger")
        if state["logger"] is None:
            state["logger"] = logger  # TensorRT keeps the first one for the whole process

    def log(severity, msg):
        state["logger"].log(severity, msg)

    trt.ILogger = ILogger
    flag_names = ["GPU_FALLBACK", *(["FP16", "INT8"] if weak_typing else [])]
    trt.BuilderFlag = IntEnum("BuilderFlag", flag_names, start=0)
    creation = (["EXPLICIT_BATCH"] if major < 11 else []) + ["STRONGLY_TYPED"]
    trt.NetworkDefinitionCreationFlag = IntEnum(
        "NetworkDefinitionCreationFlag", {name: i for i, name in enumerate(creation, start=0 if major < 11 else 1)})
    trt.MemoryPoolType = IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)
    trt.DeviceType = IntEnum("DeviceType", ["GPU", "DLA"], start=0)
    trt.TensorIOMode = IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"], start=0)
    trt.DataType = IntEnum("DataType", ["FLOAT", "HALF"], start=0)

    class Layer:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self):
            self.layers = []

        def get_input(self, index):
            assert index == 0
            return types.SimpleNamespace(name="input")

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, index):
            return self.layers[index]

    class ParserError:
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    class OnnxParser:
        def __init__(self, network, logger):
            adopt(logger)
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            calls["parsed"] = path
            if parser_errors:
                self.num_errors = len(parser_errors)
                return False
            self.network.layers = [Layer(n) for n in ("conv1", "relu1", "conv2", "pool", "fc")]
            return True

        def get_error(self, index):
            return ParserError(parser_errors[index])

    class Profile:
        def __init__(self):
            self.shapes = None

        def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's own parameter names
            if not (len(min) == len(opt) == len(max)) or not all(a <= b <= c for a, b, c in zip(min, opt, max)):
                raise ValueError(f"invalid profile for {name}: {min}, {opt}, {max}")
            self.shapes = (name, tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return HostMemory(b"timing:" + self.data)

    class Config:
        def __init__(self):
            self.builder_optimization_level = 3
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self._profiles = []
            self._flags = set()

        def set_memory_pool_limit(self, pool, size):
            assert isinstance(pool, trt.MemoryPoolType)
            calls["memory_pool"] = (pool.name, size)

        def set_flag(self, flag):
            if not isinstance(flag, trt.BuilderFlag):
                raise TypeError(f"not a BuilderFlag: {flag!r}")
            self._flags.add(flag.name)
            calls["flags"].append(flag.name)

        def add_optimization_profile(self, profile):
            if profile.shapes is None:
                raise ValueError("profile has no shapes")
            self._profiles.append(profile.shapes)
            calls["profiles"].append(profile.shapes)
            return len(self._profiles) - 1

        def can_run_on_DLA(self, layer):
            return self.default_device_type == trt.DeviceType.DLA and layer.name not in non_dla_layers

        def create_timing_cache(self, data):
            calls["timing_cache_in"] = bytes(data)
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self._cache = cache

        def get_timing_cache(self):
            return self._cache

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            adopt(logger)
            log(Severity.WARNING, "fake warning")

        def create_network(self, flags):
            known = 0
            for member in trt.NetworkDefinitionCreationFlag:
                known |= 1 << int(member)
            if flags & ~known:
                raise TypeError(f"unknown network creation flag bits {flags & ~known:#x}")
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls["optimization_level"] = config.builder_optimization_level
            if trt.build_error:
                log(Severity.ERROR, trt.build_error)
                return None
            dla = config.default_device_type == trt.DeviceType.DLA
            if dla and any(p[1] != p[3] for p in config._profiles):
                log(Severity.ERROR, "DLA does not support dynamic shapes: min, opt and max must be equal")
                return None
            if not config._profiles:
                log(Severity.ERROR, "network has dynamic inputs but no optimization profile")
                return None
            plan = {"magic": "fake-plan", "profiles": [list(map(list, p[1:])) for p in config._profiles],
                    "dla_core": config.DLA_core if dla else None, "half": "FP16" in config._flags}
            return HostMemory(json.dumps(plan).encode())

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.profile = 0
            self.input_shape = None
            self.addresses = {}

        def set_optimization_profile_async(self, index, stream):
            if not 0 <= index < len(self.engine.profiles):
                log(Severity.ERROR, f"profile {index} does not exist")
                return False
            self.profile, self.input_shape = index, None
            calls.setdefault("profile_switches", []).append(index)
            return True

        def set_input_shape(self, name, shape):
            low, _, high = self.engine.profiles[self.profile]
            shape = tuple(shape)
            if name != "input" or len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
                log(Severity.ERROR, f"input shape {shape} outside profile {self.profile}")
                return False
            self.input_shape = shape
            return True

        def get_tensor_shape(self, name):
            if name == "logits":
                return (self.input_shape[0] if self.input_shape else -1, NUM_CLASSES)
            return self.input_shape or tuple(-1 for _ in self.engine.profiles[0][0])

        def set_tensor_address(self, name, address):
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle):
            if self.input_shape is None or set(self.addresses) != {"input", "logits"}:
                log(Severity.ERROR, "input shape or a tensor address not set before enqueue")
                return False
            shape, source, target = self.input_shape, self.addresses["input"], self.addresses["logits"]

            def compute():
                x = np.ctypeslib.as_array((ctypes.c_float * int(np.prod(shape))).from_address(source))
                out = np.ctypeslib.as_array((ctypes.c_float * (shape[0] * NUM_CLASSES)).from_address(target))
                sums = x.reshape(shape[0], -1).sum(axis=1)
                out[:] = (sums[:, None] * np.arange(1, NUM_CLASSES + 1)[None, :]).reshape(-1)

            pending.setdefault(stream_handle, []).append(compute)
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, plan):
            self.profiles = [tuple(map(tuple, p)) for p in plan["profiles"]]
            self.dla_core = plan["dla_core"]

        @property
        def num_optimization_profiles(self):
            return len(self.profiles)

        def get_tensor_name(self, index):
            return ("input", "logits")[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name, index):
            return [list(s) for s in self.profiles[index]]

        def create_execution_context(self):
            return Context(self)

        @property
        def device_memory_size_v2(self):  # TensorRT 10: activation and scratch bytes of one context
            return 4096 * max(p[2][0] for p in self.profiles)

    class Runtime:
        def __init__(self, logger):
            adopt(logger)
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data):
            try:
                plan = json.loads(bytes(data))
                assert plan["magic"] == "fake-plan"
            except (ValueError, KeyError, AssertionError, TypeError):
                log(Severity.ERROR, "fake: magic tag does not match (not a plan from this TensorRT)")
                return None
            if plan["dla_core"] is not None and self.DLA_core != plan["dla_core"]:
                log(Severity.ERROR, f"engine was built for DLA core {plan['dla_core']}, runtime DLA core is "
                    f"{self.DLA_core}")
                return None
            return Engine(plan)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


class FakeDevice:
    """The runner's device object on host memory: buffers are CPU tensors, and the stream runs the
    work `execute_async_v3` enqueued only when synchronised."""

    _handles = count(1000)

    def __init__(self, trt):
        self.trt = trt
        self.stream_handle = next(self._handles)
        self.synchronized = 0

    def upload(self, array, dtype):
        return torch.from_numpy(np.array(array, dtype=np.float32)).to(getattr(torch, dtype)).contiguous()

    def empty(self, shape, dtype):
        return torch.zeros(shape, dtype=getattr(torch, dtype))

    @staticmethod
    def address(buffer):
        return buffer.data_ptr()

    def synchronize(self):
        self.synchronized += 1
        for work in self.trt.pending.pop(self.stream_handle, []):
            work()

    @staticmethod
    def download(buffer):
        return buffer.float().numpy().copy()
