"""Do learned gates earn their keep? A seeded sweep of importance criteria on two data sets.

For each data set (the built-in `synthetic` scenes and scikit-learn's `digits`) a resnet20 is
trained once (`runs/bench-DATA`, ignored by git), then `edgeprune.sweep.run_sweep` prunes it at
every keep ratio with every criterion, fine-tunes with every seed, evaluates, exports ONNX and
times dense vs pruned interleaved with ONNX Runtime on the CPU. Results go to
`benchmarks/results/sweep-DATA/` (sweep.json, sweep.csv, plots); the comparison the issue asks
for (gate vs magnitude at keep 0.3 and 0.2, over seeds, paired by seed) goes to
`benchmarks/results/compare_criteria.md`. Interrupted? Run the same command again: finished runs
are reused.

    .venv/bin/python benchmarks/compare_criteria.py --data digits
    .venv/bin/python benchmarks/compare_criteria.py --data synthetic
    .venv/bin/python benchmarks/compare_criteria.py --report-only     # rewrite the .md from the JSON
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeprune.fileio import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = ("digits", "synthetic")
COMPARE_KEEPS = (0.3, 0.2)
#: Dense recipe per data set: digits is 1.4k tiny images, so it gets more (cheap) epochs.
DENSE_EPOCHS = {"synthetic": None, "digits": 20}


def _progress_printer(label: str):
    """A ProgressCallback that prints one line per finished sweep run (and little else)."""
    started = time.perf_counter()
    last: dict[str, float] = {}

    def callback(task: str, completed: float, total: float) -> None:
        if task == "sweep runs" and last.get(task) != completed:
            last[task] = completed
            print(f"[{label}] {int(completed)}/{int(total)} runs  {time.perf_counter() - started:7.0f} s",
                  file=sys.stderr, flush=True)
        elif task in ("train", "learning gates") and completed == total:
            print(f"[{label}] {task} done  {time.perf_counter() - started:7.0f} s", file=sys.stderr, flush=True)

    return callback


def ensure_dense_run(data: str, run_dir: Path, progress) -> None:
    """Train resnet20 on `data` into `run_dir` unless it is already there."""
    if (run_dir / "dense.pt").is_file():
        return
    from edgeprune.run import train_run
    from edgeprune.train import DEMO_TRAIN_CONFIG

    config = DEMO_TRAIN_CONFIG
    if DENSE_EPOCHS[data] is not None:
        config = replace(config, epochs=DENSE_EPOCHS[data])
    train_run(run_dir, "resnet20", data, config, progress=progress)


def sweep_config(args: argparse.Namespace):
    from edgeprune.sweep import DEFAULT_SWEEP_BENCH, SweepConfig

    bench = replace(DEFAULT_SWEEP_BENCH, min_seconds=args.bench_seconds, threads=args.bench_threads)
    return SweepConfig(seeds=args.seeds, criteria=tuple(args.criteria.split(",")),
                       finetune_epochs=args.finetune_epochs, bench=bench)


# --- used only while edgeprune.data / edgeprune.run are not in the tree (or with --local-data) ----------

LOCAL_SIZES = {"synthetic": (6000, 2000)}  # train, test images of the built-in scenes


def _normalised(train_x, test_x):
    import torch

    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train_x - mean) / std, (test_x - mean) / std


def local_splits(data: str):
    """digits: scikit-learn's 1797 8x8 images, stratified 75/25 split (seed 0), 1 channel.
    synthetic: `edgeprune.data.synthetic.generate` (train seed 0, test seed 1), 3x32x32.
    Both normalised per channel with the training split's mean and std."""
    from types import SimpleNamespace

    import torch
    from torch.utils.data import TensorDataset

    if data == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        index = np.arange(len(y))
        train, test = train_test_split(index, test_size=0.25, random_state=0, stratify=digits.target)
        train_x, test_x = _normalised(x[train], x[test])
        train_y, test_y = y[train], y[test]
    else:
        from edgeprune.data.synthetic import generate

        n_train, n_test = LOCAL_SIZES[data]
        (train_x, train_y), (test_x, test_y) = generate(n_train, 0), generate(n_test, 1)
        train_x, test_x = _normalised(torch.from_numpy(train_x), torch.from_numpy(test_x))
        train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)
    return SimpleNamespace(train=TensorDataset(train_x, train_y), test=TensorDataset(test_x, test_y))


def local_dense_model(data: str, run_dir: Path, progress):
    """resnet20 trained once on `local_splits(data)` (dense.pt in run_dir, reused when present)."""
    import torch

    from edgeprune.fileio import sha256_file
    from edgeprune.models.cifar_resnet import resnet20
    from edgeprune.sweep import DenseModel
    from edgeprune.train import DEMO_TRAIN_CONFIG, train_model

    splits = local_splits(data)
    input_shape = tuple(splits.train[0][0].shape)
    recipe = DEMO_TRAIN_CONFIG if DENSE_EPOCHS[data] is None else replace(DEMO_TRAIN_CONFIG, epochs=DENSE_EPOCHS[data])
    torch.manual_seed(0)
    model = resnet20(10, in_channels=input_shape[0])
    path = run_dir / "dense.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        train_model(model, splits, recipe, progress=progress, label="train")
        torch.save(model.state_dict(), path)
    source = {"run": str(run_dir), "model": "resnet20", "data": data, "prepared_by": "benchmarks/compare_criteria.py "
              "local_splits (edgeprune.data/edgeprune.run were not available)", "train": recipe.to_dict(),
              "sizes": [len(splits.train), len(splits.test)], "fingerprint": sha256_file(path)[:16]}
    return DenseModel(f"bench-{data}", model.eval(), splits, input_shape, run_dir / "gates.pt"), source


def _have_run_module() -> bool:
    try:
        from edgeprune.data import load_dataset  # noqa: F401
        from edgeprune.run import load_run  # noqa: F401
    except ImportError:
        return False
    return True


def run_one_dataset(data: str, args: argparse.Namespace) -> None:
    from edgeprune.sweep import run_sweep, sweep_command, sweep_dense

    run_dir = Path("runs") / f"bench-{data}"
    progress = _progress_printer(data)
    config = sweep_config(args)
    out_dir = RESULTS / f"sweep-{data}"
    if _have_run_module() and not args.local_data:
        ensure_dense_run(data, run_dir, progress)
        command = sweep_command(run_dir, out_dir.relative_to(ROOT), config)
        run_sweep(run_dir, out_dir, config, progress, force=args.force, command=command)
        return
    dense, source = local_dense_model(data, run_dir, progress)
    command = shlex.join([".venv/bin/python", "benchmarks/compare_criteria.py", *sys.argv[1:]])
    sweep_dense(lambda seed: dense, out_dir, config, source=source, progress=progress, force=args.force,
                command=command)


# --- the report --------------------------------------------------------------------------------------


def _paired(document: dict, a: str, b: str, keep: float) -> dict | None:
    """Accuracy of `a` and `b` at `keep`, per seed, and the paired difference a - b with its t interval."""
    from edgeprune.sweep_stats import summarize

    by = {(r["criterion"], r["seed"]): r["accuracy_pct"] for r in document["records"] if abs(r["keep"] - keep) < 1e-9}
    seeds = sorted(s for (c, s) in by if c == a and (b, s) in by)
    if not seeds:
        return None
    acc_a, acc_b = [by[(a, s)] for s in seeds], [by[(b, s)] for s in seeds]
    return {"seeds": seeds, "a": summarize(acc_a), "b": summarize(acc_b),
            "diff": summarize(np.subtract(acc_a, acc_b)), "per_seed_a": acc_a, "per_seed_b": acc_b}


def _fmt(summary, digits: int = 2) -> str:
    if summary.std is None:
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"


def _ci(summary, digits: int = 2) -> str:
    return "-" if summary.ci95_low is None else f"[{summary.ci95_low:+.{digits}f}, {summary.ci95_high:+.{digits}f}]"


def write_report(commands: list[str]) -> Path:
    """compare_criteria.md from the sweep.json files present; every number comes from them."""
    lines = ["# Learned gates vs magnitude (and the random floor): accuracy vs sparsity over seeds", ""]
    documents = {}
    for data in DATASETS:
        path = RESULTS / f"sweep-{data}" / "sweep.json"
        if path.is_file():
            documents[data] = json.loads(path.read_text(encoding="utf-8"))
    if not documents:
        raise SystemExit("no sweep results yet: run benchmarks/compare_criteria.py --data digits first")
    env = next(iter(documents.values()))["environment"]
    lines += [
        "Produced by `benchmarks/compare_criteria.py` (which calls `edgeprune.sweep.run_sweep`). "
        "Every figure below is read from the `sweep.json` next to the plots.",
        "",
        f"**Machine:** {env.get('cpu_model')}, {env.get('logical_cores')} logical cores "
        f"({env.get('available_cores')} available), {env.get('os')}, torch {env['versions'].get('torch')}, "
        f"onnxruntime {env['versions'].get('onnxruntime')}. Shared with other jobs while it ran, so latency "
        "is noisy: speedups are ratios measured dense/pruned interleaved in one run, which drift hits alike.",
        "",
        "## Commands", "", "```",
        *commands, "```", "",
        "The equivalent `edgeprune sweep` command of each sweep is recorded in its `sweep.json` (`command`):",
        "", "```", *[d.get("command") or "(not recorded)" for d in documents.values()], "```", "",
    ]
    lines += ["## Verdict: gate vs magnitude at keep 0.3 and 0.2", "",
              "Mean ± sample std of test accuracy (%) after fine-tuning, over seeds; the difference is paired "
              "by seed (same dense model and same fine-tune seed, only the criterion differs) with a 95% "
              "t interval.", "",
              "| data | keep | n | gate | magnitude | random | gate − magnitude | 95% CI | gate ≥ magnitude? |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    verdicts = []
    for data, document in documents.items():
        for keep in COMPARE_KEEPS:
            pair = _paired(document, "gate", "magnitude", keep)
            if pair is None:
                continue
            rnd = _paired(document, "random", "gate", keep)
            random_text = _fmt(rnd["a"]) if rnd else "-"
            diff = pair["diff"]
            significant = diff.ci95_low is not None and (diff.ci95_low > 0 or diff.ci95_high < 0)
            note = "significant" if significant else "within noise: the interval holds 0"
            if diff.mean >= 0:
                answer = f"yes, by {diff.mean:.2f} pt ({note})"
            else:
                answer = f"no, by {-diff.mean:.2f} pt ({note})"
            verdicts.append((data, keep, diff.mean, answer))
            lines.append(f"| {data} | {keep:g} | {len(pair['seeds'])} | {_fmt(pair['a'])} | {_fmt(pair['b'])} | "
                         f"{random_text} | {diff.mean:+.2f} | {_ci(diff)} | {answer} |")
    lines.append("")
    if verdicts:
        losses = [v for v in verdicts if v[2] < 0]
        if not losses:
            lines.append("**Answer: yes.** Averaged over seeds, learned gates are at least as accurate as weight "
                         "magnitude at keep 0.3 and 0.2 on every data set measured here (see the last column "
                         "for which differences are larger than the seed-to-seed noise).")
        else:
            where = "; ".join(f"{d} keep {k:g}: {-m:.2f} pt ({a.split('(')[1].rstrip(')')})"
                              for d, k, m, a in losses)
            lines.append(f"**Answer: no, not everywhere.** Averaged over seeds, learned gates are less accurate "
                         f"than magnitude at: {where}.")
        lines.append("")
    for data, document in documents.items():
        lines += _dataset_section(data, document)
    path = RESULTS / "compare_criteria.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _dataset_section(data: str, document: dict) -> list[str]:
    config = document["config"]
    bench = config.get("bench") or {}
    point = document.get("operating_point")
    lines = [f"## {data}", "",
             f"Dense resnet20: {document['dense_accuracy_pct']:.2f}% test accuracy "
             f"({document['source'].get('run')}"
             + (f"; data and dense model prepared by {document['source']['prepared_by']}"
                if document["source"].get("prepared_by") else "")
             + f"; train/test {document['source'].get('sizes', '?')}). Settings: keeps {', '.join(f'{k:g}' for k in config['keeps'])}; "
             f"seeds {config['seeds']}; criteria {', '.join(config['criteria'])}; fine-tune "
             f"{config['finetune_epochs']} epoch(s) (SGD nesterov, cosine, lr {config['finetune_lr']:g}, seeded); "
             f"gates learned once ({config['gate']['max_epochs']} epoch(s) max, l1 {config['gate']['l1']:g}, "
             f"weights {config['gate']['weights']}); budget {config['budget']}, channels rounded to the target's "
             f"multiple ({config['target']}), min {config['min_channels']} per group; latency: ONNX Runtime CPU, "
             f"batch {bench.get('batch_sizes')}, {bench.get('threads') or 'default'} thread(s), warm-up "
             f"{bench.get('warmup_s')} s, at least {bench.get('min_seconds')} s and {bench.get('min_iterations')} "
             f"iterations per model in {bench.get('rounds')} interleaved rounds. Sweep wall time "
             f"{document['seconds'] / 60:.1f} min ({document['runs_done']} runs now, {document['runs_reused']} reused).",
             ""]
    if point:
        lines += [f"**Operating point** (lowest keep whose mean accuracy is within {point['tolerance_points']:g} pt "
                  f"of dense): keep {point['keep']:g} with `{point['criterion']}`, {100 * point['sparsity']:.0f}% of "
                  f"parameters removed, {point['accuracy_pct']:.2f}% vs dense {point['dense_accuracy_pct']:.2f}%"
                  + (f", {point['speedup']:.2f}x faster (p50, batch 1)." if point.get("speedup") else "."), ""]
    else:
        lines += [f"**Operating point:** none: no keep ratio stays within {config['tolerance_points']:g} pt of dense.", ""]
    by_criterion = document.get("operating_points_by_criterion") or {}
    if by_criterion:
        lines += ["Per criterion: " + "; ".join(
            f"{c}: " + (f"keep {p['keep']:g} ({p['accuracy_pct']:.2f}%)" if p else "none")
            for c, p in by_criterion.items()) + ".", ""]
    lines += ["| keep | criterion | n | achieved keep | accuracy % (mean ± std) | 95% CI | before fine-tune % | "
              "pruned p50 ms | speedup |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(document["aggregates"], key=lambda r: (-r["keep"], r["criterion"])):
        acc = row["accuracy_pct"]
        ci = f"[{acc['ci95_low']:.2f}, {acc['ci95_high']:.2f}]" if acc["ci95_low"] is not None else "-"
        std = f" ± {acc['std']:.2f}" if acc["std"] is not None else ""
        p50 = f"{row['pruned_p50_ms']['mean']:.3f}" if row.get("pruned_p50_ms") else "-"
        speed = f"{row['speedup']['mean']:.2f}x" if row.get("speedup") else "-"
        lines.append(f"| {row['keep']:g} | {row['criterion']} | {acc['n']} | {row['keep_achieved']:.3f} | "
                     f"{acc['mean']:.2f}{std} | {ci} | {row['accuracy_before_finetune_pct']['mean']:.2f} | {p50} | {speed} |")
    folder = f"sweep-{data}"
    lines += ["", f"![accuracy vs sparsity]({folder}/accuracy_vs_sparsity.png)",
              f"![latency vs sparsity]({folder}/latency_vs_sparsity.png)",
              f"![accuracy vs latency]({folder}/accuracy_vs_latency.png)", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", choices=DATASETS, help="data set(s) to sweep (repeatable)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--criteria", default="gate,magnitude,random")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--bench-seconds", type=float, default=0.4)
    parser.add_argument("--bench-threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="discard runs recorded under other settings")
    parser.add_argument("--local-data", action="store_true",
                        help="prepare data and dense model in benchmarks/local_dense.py instead of edgeprune.run")
    parser.add_argument("--report-only", action="store_true", help="only rewrite compare_criteria.md")
    args = parser.parse_args(argv)
    commands_file = RESULTS / "compare_criteria.commands.txt"
    commands = commands_file.read_text().splitlines() if commands_file.is_file() else []
    if not args.report_only:
        this = shlex.join([".venv/bin/python", "benchmarks/compare_criteria.py", *(argv if argv is not None else sys.argv[1:])])
        for data in args.data or DATASETS:
            run_one_dataset(data, args)
        commands = [c for c in commands if c != this] + [this]
        write_text_atomic(commands_file, "\n".join(commands) + "\n")
    print(write_report(commands))


if __name__ == "__main__":
    main()
