"""A bundle round-trips an export, and a tampered, truncated or hostile one is refused by name."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Callable

import pytest

from edgeprune.workflows.bundle import BUNDLE_MANIFEST, extract, pack, verify
from edgeprune.errors import BundleError, OutputExistsError
from edgeprune.fileio import sha256_file
from export_fixture import CLASS_NAMES, DROP, make_export

Members = list[tuple[tarfile.TarInfo, bytes]]


@pytest.fixture()
def export_dir(tmp_path) -> Path:
    return make_export(tmp_path / "dist")


@pytest.fixture()
def bundle_path(export_dir, tmp_path) -> Path:
    path = tmp_path / "model.tar.gz"
    pack(export_dir, path)
    return path


def _rewrite(bundle_path: Path, change: Callable[[Members], Members]) -> Path:
    """Re-pack the bundle's members after `change`, as an attacker or a broken copy would."""
    with tarfile.open(bundle_path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]
    members = change(members)
    out = bundle_path.with_name("changed.tar.gz")
    with tarfile.open(out, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out


def _add(name: str, **fields) -> Callable[[Members], Members]:
    def change(members: Members) -> Members:
        info = tarfile.TarInfo(name)
        for key, value in fields.items():
            setattr(info, key, value)
        return members + [(info, b"evil" if info.isfile() else b"")]
    return change


def _refused(bundle: Path, dest: Path, *words: str) -> BundleError:
    with pytest.raises(BundleError) as caught:
        extract(bundle, dest)
    for word in words:
        assert word in str(caught.value)
    assert not dest.exists(), "nothing may be extracted from a refused bundle"
    if dest.parent.exists():
        assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")]
    return caught.value


def test_round_trip_keeps_every_file_and_the_input_spec(export_dir, bundle_path, tmp_path):
    root = extract(bundle_path, tmp_path / "unpacked")
    index = json.loads((root / BUNDLE_MANIFEST).read_text())
    originals = sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file())
    assert sorted(index["files"]) == originals
    for name, digest in index["files"].items():
        assert sha256_file(root / name) == digest == sha256_file(export_dir / name)
    assert index["input"] == {"shape": [3, 8, 8], "dtype": "float32", "layout": "NCHW",
                              "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                              "class_names": CLASS_NAMES}
    assert index["num_classes"] == 10 and index["model"] == "model.onnx"


def test_verify_runs_the_model_once(bundle_path):
    result = verify(bundle_path)
    assert result.ok, result.checks
    assert [c.name for c in result.checks] == ["checksums", "manifest", "model runs"]
    assert result.output_shape == (1, 10)


def test_verify_shows_the_bundled_exports_own_verdict(bundle_path, tmp_path):
    from export_fixture import make_export

    assert verify(bundle_path).verdict.status == "ok"
    failing = make_export(tmp_path / "bad", {"accuracy_before": 0.1, "accuracy_after": 0.1})
    result = verify(pack(failing, tmp_path / "bad.tar.gz").path)
    assert result.ok, "integrity checks pass; the verdict is the export's, shown beside them"
    assert result.verdict.status == "fail" and "looks untrained" in result.verdict.summary
    assert any(f.rule_id == "untrained_model" for f in result.findings)


def test_pack_is_reproducible_and_refuses_to_overwrite(export_dir, bundle_path):
    first = bundle_path.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        pack(export_dir, bundle_path)
    pack(export_dir, bundle_path, force=True)
    assert bundle_path.read_bytes() == first


def test_pack_skips_its_own_output_inside_the_export(export_dir):
    info = pack(export_dir, export_dir / "self.tar.gz")
    assert "self.tar.gz" not in info.files
    info = pack(export_dir, export_dir / "self.tar.gz", force=True)
    assert "self.tar.gz" not in info.files


def test_pack_refuses_incomplete_exports(tmp_path):
    export = make_export(tmp_path, {"input": {"mean": DROP}}, name="nomean")
    with pytest.raises(BundleError, match="mean"):
        pack(export, tmp_path / "a.tar.gz")
    export = make_export(tmp_path, name="nomodel")
    (export / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx"):
        pack(export, tmp_path / "b.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists() and not (tmp_path / "b.tar.gz").exists()


def test_pack_refuses_symlinks_in_the_export(export_dir, tmp_path):
    os.symlink("/etc/hostname", export_dir / "link.txt")
    with pytest.raises(BundleError, match="link.txt"):
        pack(export_dir, tmp_path / "x.tar.gz")


def test_tampered_model_is_refused_by_name(bundle_path, tmp_path):
    def flip_a_byte(members: Members) -> Members:
        out = []
        for info, data in members:
            if info.name == "model.onnx":
                data = data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]
            out.append((info, data))
        return out

    tampered = _rewrite(bundle_path, flip_a_byte)
    _refused(tampered, tmp_path / "out", "'model.onnx'", "sha256")
    result = verify(tampered)
    assert not result.ok
    assert result.checks[0].name == "checksums" and not result.checks[0].passed
    assert "model.onnx" in result.checks[0].detail


def test_truncated_bundle_is_refused(bundle_path, tmp_path):
    data = bundle_path.read_bytes()
    truncated = tmp_path / "half.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    error = _refused(truncated, tmp_path / "out", "half.tar.gz", "truncated or corrupt")
    assert "'" in str(error), "the message names the member where reading stopped"
    assert not verify(truncated).ok


def test_garbage_file_is_refused(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball at all" * 10)
    _refused(junk, tmp_path / "out", "junk.tar.gz")


@pytest.mark.parametrize("change, member, reason", [
    (_add("../evil"), "'../evil'", "'..'"),
    (_add("plots/../../evil"), "'plots/../../evil'", "'..'"),
    (_add("/tmp/evil"), "'/tmp/evil'", "absolute"),
    (_add("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "'link'", "link"),
    (_add("hard", type=tarfile.LNKTYPE, linkname="model.onnx"), "'hard'", "link"),
    (_add("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "'dev'", "device"),
    (_add("fifo", type=tarfile.FIFOTYPE), "'fifo'", "device"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "char-device", "fifo"])
def test_unsafe_members_are_refused_before_anything_is_written(
        bundle_path, tmp_path, change, member, reason):
    hostile = _rewrite(bundle_path, change)
    _refused(hostile, tmp_path / "a" / "out", member, reason)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_unlisted_extra_file_is_refused(bundle_path, tmp_path):
    _refused(_rewrite(bundle_path, _add("extra.txt")), tmp_path / "out", "'extra.txt'", "not listed")


def test_missing_file_is_refused(bundle_path, tmp_path):
    without_plan = _rewrite(bundle_path, lambda ms: [(i, d) for i, d in ms if i.name != "plan.json"])
    _refused(without_plan, tmp_path / "out", "'plan.json'", "missing")


def test_duplicate_member_is_refused(bundle_path, tmp_path):
    def duplicate(members: Members) -> Members:
        info, data = next((i, d) for i, d in members if i.name == "model.onnx")
        return members + [(info, b"replacement")]

    _refused(_rewrite(bundle_path, duplicate), tmp_path / "out", "'model.onnx'", "twice")


def test_bundle_without_index_is_refused(bundle_path, tmp_path):
    no_index = _rewrite(bundle_path, lambda ms: [(i, d) for i, d in ms if i.name != BUNDLE_MANIFEST])
    _refused(no_index, tmp_path / "out", BUNDLE_MANIFEST)


def test_extract_refuses_a_nonempty_destination(bundle_path, tmp_path):
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        extract(bundle_path, dest)
    assert (dest / "keep.txt").read_text() == "mine"


def test_verify_fails_when_the_output_has_the_wrong_shape(tmp_path):
    export = make_export(tmp_path, {"num_classes": 5, "chance_accuracy": 0.2,
                                    "input": {"class_names": CLASS_NAMES[:5]}})
    path = tmp_path / "five.tar.gz"
    pack(export, path)
    result = verify(path)
    assert not result.ok
    assert result.checks[-1].name == "model runs" and not result.checks[-1].passed
    assert "expected (1, 5)" in result.checks[-1].detail
