"""Gate learning plus one fine-tune epoch, on CUDA against CPU, for the same model and data.

    python benchmarks/device_training.py [--devices cpu,cuda] [--out results.md]

tv:resnet18 at 64x64 on 2,048 images of the built-in synthetic data (512 held out): the gate
phase for one epoch (frozen weights, as `edgeprune export` runs it) and one epoch of
`train_model` (the fine-tune loop), each timed with a warm-up batch excluded, per device, in one
process. CUDA runs under the toolchain's own settings (bf16/fp16 autocast, channels_last). A
device that is absent is reported as not run, with the reason; nothing is estimated.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch


def _time_device(device: torch.device, splits) -> dict:
    from edgeprune.analysis.graph import analyze
    from edgeprune.importance.gates import GateConfig, learn_gates
    from edgeprune.training.models import build_model
    from edgeprune.training.train import TrainConfig, train_model
    from edgeprune.workflows.prune import example_input

    torch.manual_seed(0)
    model = build_model("tv:resnet18", splits.info.num_classes, splits.info.input_shape)
    graph = analyze(model, example_input(splits.info.input_shape))
    model.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # warm-up: one short pass of each loop (kernel selection, allocator), not timed
    learn_gates(model, graph, splits.train, GateConfig(max_epochs=1, max_batches_per_epoch=2))
    sync()
    start = time.perf_counter()
    gates = learn_gates(model, graph, splits.train, GateConfig(max_epochs=1))
    sync()
    gate_s = time.perf_counter() - start
    start = time.perf_counter()
    result = train_model(model, splits, TrainConfig(epochs=1, batch_size=128, lr=0.05, schedule="cosine"))
    sync()
    epoch_s = time.perf_counter() - start
    return {"gate_epoch_s": gate_s, "finetune_epoch_s": epoch_s, "accuracy": result.test.accuracy,
            "gates": int(gates.gates.numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--train-size", type=int, default=2048, help="smaller for a smoke run")
    args = parser.parse_args()
    from edgeprune.training.data import load_dataset

    splits = load_dataset("synthetic", image_size=64, train_size=args.train_size, test_size=512)
    rows, timings = [], {}
    for name in args.devices.split(","):
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            rows.append(f"| {name} | not run: torch.cuda.is_available() is False | | |")
            continue
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
        t = timings[name] = _time_device(device, splits)
        rows.append(f"| {name} ({label}, {torch.get_num_threads()} CPU threads) | {t['gate_epoch_s']:.2f} | "
                    f"{t['finetune_epoch_s']:.2f} | {t['accuracy']:.3f} |")
    lines = ["| device | gate epoch (s) | fine-tune epoch (s) | accuracy after 1 epoch |", "|---|---:|---:|---:|", *rows]
    if "cpu" in timings and "cuda" in timings:
        cpu, gpu = timings["cpu"], timings["cuda"]
        lines.append("")
        lines.append(f"CUDA / CPU speedup, same process: gate epoch {cpu['gate_epoch_s'] / gpu['gate_epoch_s']:.1f}x, "
                     f"fine-tune epoch {cpu['finetune_epoch_s'] / gpu['finetune_epoch_s']:.1f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
