"""The package's layering (docs/architecture.md: lower stages never import higher ones) and its packaging."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contract_is_kept():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_every_package_under_src_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"


def test_package_top_level_holds_a_dozen_modules_at_most():
    top = [p for p in (ROOT / "src" / "edgeprune").iterdir()
           if (p.suffix == ".py" and p.name != "__init__.py")]
    assert len(top) <= 12, sorted(p.name for p in top)


def test_import_edgeprune_is_light_and_has_no_side_effects():
    code = (
        "import logging, os, sys; calls = []; real = os.umask;"
        "os.umask = lambda mask: (calls.append(mask), real(mask))[1];"
        "import edgeprune, edgeprune.fileio, edgeprune.targets, edgeprune.cli;"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules];"
        "assert not heavy, heavy;"
        "assert not calls, f'umask changed at import: {calls}';"
        "assert logging.root.manager.disable == 0"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
