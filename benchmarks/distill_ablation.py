"""What do distillation and gradual pruning add to the fine-tune? Two ablations, paired by seed.

    PYTHONPATH=src python benchmarks/distill_ablation.py [--seeds 3] [--keeps 0.5,0.3,0.2]

The digits resnet20 of benchmarks/compare_criteria.py (trained once into runs/bench-digits), then
the same seeded sweep three times (criteria gate and magnitude, no latency): labels only
(`distill_weight` 0), the default distillation (0.5, T = 4), and the default distillation pruned
in 3 steps (`--steps 3`, one recovery epoch after each of the first two). The first two run the
same epochs (distillation adds one teacher forward pass per batch); gradual pruning spends 2
more epochs, on the larger intermediate models, and the table says so. Results:
benchmarks/results/sweep-digits-{distill0,distill0.5,steps3}/ and
benchmarks/results/distill_ablation.md, every figure read from those sweep.json files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_criteria import RESULTS, _ci, _fmt, _paired, _progress_printer, ensure_dense_run  # noqa: E402

from edgeprune.fileio import write_text_atomic  # noqa: E402

#: arm name -> (distill_weight, steps)
ARMS = {"distill0": (0.0, 1), "distill0.5": (0.5, 1), "steps3": (0.5, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keeps", default="0.5,0.3,0.2")
    parser.add_argument("--criteria", default="gate,magnitude")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from edgeprune.workflows.sweep import SweepConfig, run_sweep, sweep_command

    run_dir = Path("runs") / "bench-digits"
    ensure_dense_run("digits", run_dir, _progress_printer("digits"))
    keeps = tuple(float(k) for k in args.keeps.split(","))
    documents = {}
    for arm, (weight, steps) in ARMS.items():
        config = SweepConfig(keeps=keeps, seeds=args.seeds, criteria=tuple(args.criteria.split(",")),
                             finetune_epochs=args.finetune_epochs, distill_weight=weight, steps=steps, bench=None)
        out_dir = RESULTS / f"sweep-digits-{arm}"
        run_sweep(run_dir, out_dir, config, _progress_printer(arm), command=sweep_command(run_dir, out_dir, config))
        documents[arm] = json.loads((out_dir / "sweep.json").read_text())
    write_text_atomic(RESULTS / "distill_ablation.md", report(documents, keeps, args))


def report(documents: dict, keeps, args) -> str:
    first = documents["distill0"]
    env, dense = first["environment"], first["records"][0]["dense_accuracy_pct"]
    lines = ["# Distillation and gradual pruning during recovery (digits, paired by seed)", "",
             f"Produced by `PYTHONPATH=src python benchmarks/distill_ablation.py --seeds {args.seeds} --keeps "
             f"{args.keeps} --criteria {args.criteria} --finetune-epochs {args.finetune_epochs}`; every figure is "
             "read from `sweep-digits-distill0/`, `sweep-digits-distill0.5/` and `sweep-digits-steps3/`.", "",
             f"**Machine:** {env.get('cpu_model')}, {env.get('logical_cores')} logical cores, shared with other "
             "engineers' jobs while it ran (accuracy does not depend on load; only wall time does). "
             f"Dense resnet20 on digits at 8x8: {dense:.2f}%. Mean ± sample std over seeds; differences "
             "paired by seed with a 95% t interval.", ""]
    merged = {"records": [dict(r, criterion=f"{r['criterion']}@{arm}") for arm, d in documents.items()
                          for r in d["records"]]}
    for title, a, b, compute in (
            ("Distillation (0.5, T 4) vs labels only, same epochs", "distill0.5", "distill0",
             "equal epochs"),
            ("Gradual (3 steps) vs one-shot, both distilled", "steps3", "distill0.5",
             f"gradual spends 2 recovery epochs more than the {args.finetune_epochs} fine-tune epochs")):
        lines += [f"## {title} ({compute})", "",
                  f"| criterion | keep | n | {b} (%) | {a} (%) | {a} − {b} | 95% CI |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for criterion in args.criteria.split(","):
            for keep in keeps:
                pair = _paired(merged, f"{criterion}@{a}", f"{criterion}@{b}", keep)
                if pair is not None:
                    lines.append(f"| {criterion} | {keep:g} | {len(pair['seeds'])} | {_fmt(pair['b'])} | "
                                 f"{_fmt(pair['a'])} | {pair['diff'].mean:+.2f} | {_ci(pair['diff'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
