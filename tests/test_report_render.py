"""report.md and report.html say what the rules found, embed their plots, and invent nothing."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgeprune.errors import InputError
from edgeprune.report import render_report
from edgeprune.report.render import write_report
from export_fixture import DROP, make_export

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRAISE = re.compile(r"\b(excellent|good|great|success\w*|impressive|outstanding)\b", re.IGNORECASE)


def _texts(export_dir: Path) -> tuple[str, str]:
    return ((export_dir / "report.md").read_text(encoding="utf-8"),
            (export_dir / "report.html").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> tuple[Path, list[Path]]:
    export_dir = make_export(tmp_path_factory.mktemp("healthy"))
    return export_dir, render_report(export_dir)


def test_render_writes_markdown_html_and_nonempty_plots(healthy):
    export_dir, paths = healthy
    names = {p.relative_to(export_dir).as_posix() for p in paths}
    assert names == {"report.md", "report.html", "plots/channels.png", "plots/latency.png",
                     "plots/efficiency.png"}
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_html_is_self_contained(healthy):
    export_dir, _ = healthy
    _, html = _texts(export_dir)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<link" not in html and "<script" not in html
    assert html.count('src="data:image/png;base64,') == 3
    assert "@import" not in html and "url(" not in html


def test_markdown_links_its_plots_and_states_the_summary(healthy):
    export_dir, _ = healthy
    md, _ = _texts(export_dir)
    assert "![Channels per layer](plots/channels.png)" in md
    assert "**Verdict: OK: 8 checks passed, none warned or failed.**" in md
    assert "| Parameters | 272.47 k | 135.69 k | 0.50× |" in md
    assert "| Accuracy (top-1, test set) | 91.2% | 90.5% | -0.7 points |" in md
    assert "Speedup (dense time / pruned time): 1.68×; 95% interval: 1.61–1.73×." in md
    assert "| Keep requested | 0.500 |" in md and "| Keep achieved | 0.498 |" in md
    assert "| layer3.0.conv1 | 64 | 32 | 50% |" in md
    assert "INT8 engines need top-1 agreement with FP32 of at least 95% and lose at most 1.0 accuracy points" in md


def test_untrained_model_report_says_so_and_never_praises(tmp_path):
    export_dir = make_export(tmp_path, {"accuracy_before": 0.104, "accuracy_after": 0.101})
    result = write_report(export_dir)
    md, html = _texts(export_dir)
    assert result.verdict.status == "fail"
    for text in (md, html):
        assert "the model looks untrained" in text
        assert "Verdict: FAIL: the model looks untrained" in text
        assert not PRAISE.search(text), PRAISE.search(text)
    assert "accuracy within tolerance" not in md
    assert "accuracy change not meaningful" in md


@pytest.mark.parametrize("changes, expected", [
    ({"speedup": 0.8, "speedup_ci95": [0.76, 0.84],
      "latency_ms": {"dense": {"p50": 2.0}, "pruned": {"p50": 2.5}}},
     "slowdown: pruned model is slower than dense (0.80×)"),
    ({"keep_requested": 0.3, "keep_achieved": 0.51, "params_after": DROP},
     "keep ratio missed: asked 30.0%, got 51.0%"),
    ({"onnx_parity": {"passed": False}}, "ONNX parity failed"),
], ids=["slowdown", "keep-missed", "parity"])
def test_failing_verdict_comes_from_findings(tmp_path, changes, expected):
    export_dir = make_export(tmp_path, changes)
    render_report(export_dir)
    md, html = _texts(export_dir)
    verdict_line = next(line for line in md.splitlines() if line.startswith("**Verdict"))
    assert verdict_line.startswith("**Verdict: FAIL: ")
    assert expected.replace("_", "\\_") in verdict_line
    assert expected in html
    assert not PRAISE.search(md)


def test_missing_figures_show_not_measured_and_stale_plots_go(tmp_path):
    export_dir = make_export(tmp_path)
    render_report(export_dir)
    assert (export_dir / "plots" / "latency.png").is_file()
    manifest = json.loads((export_dir / "manifest.json").read_text())
    for key in ("latency_ms", "speedup", "speedup_ci95", "memory_mb"):
        manifest.pop(key)
    (export_dir / "manifest.json").write_text(json.dumps(manifest))
    (export_dir / "bench.json").unlink()
    paths = render_report(export_dir)
    md, html = _texts(export_dir)
    assert "| Latency p50 | not measured | not measured | n/a |" in md
    assert "| Memory attributed in-process (RSS at load + growth) | not measured | not measured | n/a |" in md
    assert "Latency: not measured." in md
    assert "not measured: dense latency, pruned latency, speedup interval, memory" in md
    assert "not measured" in html
    assert not (export_dir / "plots" / "latency.png").exists()
    assert export_dir / "plots" / "latency.png" not in paths


def test_sizes_are_measured_from_disk_when_the_manifest_lacks_them(tmp_path):
    export_dir = make_export(tmp_path, {"size_bytes": DROP})
    render_report(export_dir)
    md, _ = _texts(export_dir)
    dense_mb = (export_dir / "dense.onnx").stat().st_size / 1e6
    assert f"| Size on disk (ONNX) | {dense_mb:.3f} MB |" in md


def test_user_strings_are_escaped(tmp_path):
    export_dir = make_export(tmp_path, {"name": "<script>alert(1)</script>",
                                        "model": {"spec": "module:make|net"}})
    render_report(export_dir)
    md, html = _texts(export_dir)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "| Model | module:make\\|net |" in md


def test_percent_accuracies_are_refused_with_the_key_named(tmp_path):
    export_dir = make_export(tmp_path, {"accuracy_before": 91.2, "accuracy_after": 90.5})
    with pytest.raises(InputError, match="accuracy_before must be a fraction"):
        render_report(export_dir)
    assert not (export_dir / "report.md").exists()


def test_missing_manifest_or_folder_is_a_clear_input_error(tmp_path):
    with pytest.raises(InputError, match="no export folder"):
        render_report(tmp_path / "absent")
    with pytest.raises(InputError, match="manifest.json is missing"):
        render_report(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        render_report(tmp_path)


def test_newer_manifest_schema_is_refused(tmp_path):
    export_dir = make_export(tmp_path, {"schema_version": 3})
    with pytest.raises(InputError, match="schema_version 3"):
        render_report(export_dir)
