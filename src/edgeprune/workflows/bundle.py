"""Pack an export into one verified .tar.gz, and unpack or verify one without trusting it.

A bundle is the export folder's regular files plus `bundle.json`: the sha256 of every file and
the input spec an app needs (shape, dtype, layout, mean/std, class names). `extract` checks every
member's name and type before writing anything, then every checksum, and only then moves the
files into place, so a tampered, truncated or hostile archive leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Optional

from edgeprune.errors import BundleError, OutputExistsError
from edgeprune.fileio import sha256_file, write_bytes_atomic
from edgeprune.report.findings import Finding, Verdict
from edgeprune.report.manifest import InputSpec, Manifest, ManifestError, read_manifest

BUNDLE_MANIFEST = "bundle.json"
BUNDLE_FORMAT = "edgeprune-bundle"
SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
REQUIRED_FILES = ("manifest.json", MODEL_FILE)
#: The checks `verify` runs, in order; each runs only if the one before it passed.
VERIFY_CHECKS = ("checksums", "manifest", "model runs")
#: Run after those when the manifest lists engine files besides the model (.pte, .ort, .xml, ...).
ENGINE_CHECK = "engines run"
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)


#: What bundle.json must say about the input so an app can prepare one.
REQUIRED_INPUT = ("shape", "dtype", "layout", "mean", "std")


def input_spec_from(data: Mapping[str, Any], source: str) -> InputSpec:
    """The manifest's `InputSpec` from an input document; a missing field an app needs is a BundleError."""
    missing = [k for k in REQUIRED_INPUT if data.get(k) is None]
    if missing:
        raise BundleError(f"{source} has no input {', '.join(missing)}; an app cannot "
                          "prepare inputs without them. Re-run the export.")
    names = data.get("class_names")
    return InputSpec(shape=tuple(int(d) for d in data["shape"]), dtype=str(data["dtype"]),
                     layout=str(data["layout"]), mean=tuple(float(x) for x in data["mean"]),
                     std=tuple(float(x) for x in data["std"]),
                     class_names=None if names is None else tuple(str(n) for n in names))


def _input_document(spec: InputSpec) -> dict:
    return {"shape": list(spec.shape), "dtype": spec.dtype, "layout": spec.layout,
            "mean": list(spec.mean), "std": list(spec.std),
            "class_names": None if spec.class_names is None else list(spec.class_names)}


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    files: Mapping[str, str]
    size_bytes: int
    input: InputSpec
    num_classes: int


@dataclass(frozen=True)
class VerifyCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    """Each check `verify` ran, in order; a check that could not run because an earlier one
    failed is absent, not passed. `verdict` is the bundled export's own verdict, judged by the
    report rules on its manifest.json and bench.json (None when the manifest could not be read):
    shown beside the checks, it decides `ok` only for callers that ask (`strict`)."""

    path: Path
    checks: tuple[VerifyCheck, ...]
    output_shape: Optional[tuple[int, ...]] = None
    files: Mapping[str, str] = field(default_factory=dict)
    verdict: Optional[Verdict] = None
    findings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        ran = tuple(c.name for c in self.checks)
        return ran[: len(VERIFY_CHECKS)] == VERIFY_CHECKS and all(c.passed for c in self.checks)


# --- pack ------------------------------------------------------------------------------------


def pack(export_dir: Path, out_path: Path, *, force: bool = False) -> BundleInfo:
    """Pack every regular file of `export_dir` with a bundle.json of checksums and input spec."""
    export_dir, out_path = Path(export_dir), Path(out_path)
    if not export_dir.is_dir():
        raise BundleError(f"no export folder at {export_dir}")
    if out_path.exists() and not force:
        raise OutputExistsError(f"{out_path} exists; pass --force to overwrite it")
    for name in REQUIRED_FILES:
        if not (export_dir / name).is_file():
            raise BundleError(f"{export_dir} has no {name}; bundle a complete export folder")
    manifest = _read_manifest(export_dir)
    source = f"{export_dir / 'manifest.json'}"
    spec = input_spec_from(dataclasses.asdict(manifest.input) if manifest.input else {}, source)
    num_classes = _num_classes(manifest, spec, source)

    files = {rel: sha256_file(export_dir / rel) for rel in _export_files(export_dir, out_path)}
    index = {
        "schema_version": SCHEMA_VERSION,
        "format": BUNDLE_FORMAT,
        "name": manifest.name or export_dir.name,
        "created": manifest.created,
        "model": MODEL_FILE,
        "input": _input_document(spec),
        "num_classes": num_classes,
        "files": files,
    }
    data = _tar_gz(export_dir, index)
    write_bytes_atomic(out_path, data)
    return BundleInfo(out_path, files, len(data), spec, num_classes)


def _export_files(export_dir: Path, out_path: Path) -> list[str]:
    """Relative POSIX paths of the files to pack; links are refused, hidden temp files skipped."""
    skip = out_path.resolve()
    found = []
    for path in sorted(export_dir.rglob("*")):
        rel = path.relative_to(export_dir).as_posix()
        if any(part.startswith(".") for part in PurePosixPath(rel).parts) or rel == BUNDLE_MANIFEST:
            continue
        if path.is_symlink():
            raise BundleError(f"{path} is a symbolic link; bundles hold regular files only")
        if path.is_file() and path.resolve() != skip:
            found.append(rel)
    return found


def _tar_gz(export_dir: Path, index: Mapping[str, Any]) -> bytes:
    """A reproducible archive: bundle.json first, fixed mtimes and owners, sorted members."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, BUNDLE_MANIFEST, (json.dumps(index, indent=2) + "\n").encode())
            for rel in index["files"]:
                _add_bytes(tar, rel, (export_dir / rel).read_bytes())
    return buffer.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


# --- extract ---------------------------------------------------------------------------------


def extract(bundle_path: Path, dest: Path) -> Path:
    """Check, then extract a bundle into the new or empty folder `dest`; return `dest`.

    Refuses (BundleError naming the member) absolute or '..' paths, links, devices, duplicate
    names, files missing from or not listed in bundle.json, and any checksum mismatch.
    """
    bundle_path, dest = Path(bundle_path), Path(dest)
    if not bundle_path.is_file():
        raise BundleError(f"no bundle at {bundle_path}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputExistsError(f"{dest} exists and is not an empty folder; choose a new one")
    with _open_tar(bundle_path) as tar:
        members = _read_members(tar, bundle_path)
        for member in members:
            _check_member_safe(member, bundle_path)
        _check_unique(members, bundle_path)
        index = _read_index(tar, members, bundle_path)
        files = _check_member_set(members, index, bundle_path)
        _check_checksums(tar, files, index["files"], bundle_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
        staging.chmod(0o755)
        try:
            _extract_members(tar, members, staging, bundle_path)
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest


def _open_tar(bundle_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(bundle_path, mode="r:gz")
    except _READ_ERRORS as error:
        raise BundleError(f"{bundle_path} is not a readable .tar.gz bundle ({error})") from error


def _read_members(tar: tarfile.TarFile, bundle_path: Path) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    try:
        for member in tar:
            members.append(member)
    except _READ_ERRORS as error:
        last = f"after member {members[-1].name!r}" if members else "at its start"
        raise BundleError(f"{bundle_path} is truncated or corrupt: reading stopped {last} "
                          f"({error}); pack it again") from error
    return members


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_member_safe(member: tarfile.TarInfo, bundle_path: Path) -> None:
    name = member.name
    posix = name.replace("\\", "/")
    problem = None
    if not name or posix.startswith("/") or _WINDOWS_DRIVE.match(posix):
        problem = "has an absolute path"
    elif ".." in PurePosixPath(posix).parts:
        problem = "climbs out of the folder with '..'"
    elif member.issym() or member.islnk():
        problem = f"is a link (to {member.linkname!r})"
    elif member.isdev():
        problem = "is a device or pipe"
    elif not (member.isfile() or member.isdir()):
        problem = "is not a regular file"
    if problem:
        raise BundleError(f"refusing {bundle_path}: member {name!r} {problem}")


def _check_unique(members: list[tarfile.TarInfo], bundle_path: Path) -> None:
    seen: set[str] = set()
    for member in members:
        key = PurePosixPath(member.name.replace("\\", "/")).as_posix()
        if key in seen and not member.isdir():
            raise BundleError(f"refusing {bundle_path}: member {member.name!r} appears twice")
        seen.add(key)


def _read_index(tar: tarfile.TarFile, members: list[tarfile.TarInfo], bundle_path: Path) -> dict:
    member = next((m for m in members if m.isfile() and m.name == BUNDLE_MANIFEST), None)
    if member is None:
        raise BundleError(f"{bundle_path} has no {BUNDLE_MANIFEST}; it is not an edgeprune bundle")
    try:
        index = json.loads(_member_bytes(tar, member, bundle_path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{BUNDLE_MANIFEST} in {bundle_path} is not valid JSON ({error})") from error
    problems = index_problems(index)
    if problems:
        raise BundleError(f"{BUNDLE_MANIFEST} in {bundle_path}: " + "; ".join(problems))
    return index


def index_problems(index: Any) -> list[str]:
    """Why a bundle.json does not match the schema (empty when it does)."""
    if not isinstance(index, Mapping):
        return ["must be a JSON object"]
    problems = []
    if index.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version is {index.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    files = index.get("files")
    if not isinstance(files, Mapping) or not all(
            isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in files.values()):
        problems.append("files must map each path to a sha256 hex digest")
    elif not all(name in files for name in REQUIRED_FILES):
        problems.append(f"files must include {', '.join(REQUIRED_FILES)}")
    if not isinstance(index.get("model"), str) or (isinstance(files, Mapping)
                                                  and index.get("model") not in files):
        problems.append("model must name a file in files")
    spec = index.get("input")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("shape"), list) or not spec.get("dtype"):
        problems.append("input must give shape and dtype")
    num_classes = index.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        problems.append("num_classes must be a positive integer")
    return problems


def _check_member_set(members: list[tarfile.TarInfo], index: Mapping[str, Any],
                      bundle_path: Path) -> dict[str, tarfile.TarInfo]:
    files = {m.name: m for m in members if m.isfile() and m.name != BUNDLE_MANIFEST}
    listed = index["files"]
    extra = sorted(set(files) - set(listed))
    if extra:
        raise BundleError(f"refusing {bundle_path}: member {extra[0]!r} is not listed in "
                          f"{BUNDLE_MANIFEST}")
    missing = sorted(set(listed) - set(files))
    if missing:
        raise BundleError(f"{bundle_path} is missing {missing[0]!r}, which {BUNDLE_MANIFEST} lists")
    return files


def _check_checksums(tar: tarfile.TarFile, files: Mapping[str, tarfile.TarInfo],
                     expected: Mapping[str, str], bundle_path: Path) -> None:
    for name, member in files.items():
        digest = hashlib.sha256()
        stream = tar.extractfile(member)
        try:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        except _READ_ERRORS as error:
            raise BundleError(f"{bundle_path} is truncated or corrupt: could not read "
                              f"{name!r} ({error})") from error
        if digest.hexdigest() != expected[name]:
            raise BundleError(f"{name!r} in {bundle_path} does not match its sha256 in "
                              f"{BUNDLE_MANIFEST}: the file was changed after packing")


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, bundle_path: Path) -> bytes:
    try:
        return tar.extractfile(member).read()
    except _READ_ERRORS as error:
        raise BundleError(f"{bundle_path} is truncated or corrupt: could not read "
                          f"{member.name!r} ({error})") from error


def _extract_members(tar: tarfile.TarFile, members: list[tarfile.TarInfo], staging: Path,
                     bundle_path: Path) -> None:
    try:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(staging, members=members, filter="data")
        else:  # pragma: no cover - Python without PEP 706; members were checked above
            tar.extractall(staging, members=members)
    except _READ_ERRORS as error:  # tarfile.FilterError is a TarError
        raise BundleError(f"refusing {bundle_path}: extraction failed ({error})") from error


# --- verify ----------------------------------------------------------------------------------


def verify(bundle_path: Path) -> VerifyResult:
    """Checksums, bundle.json schema, and one real inference giving finite (1, num_classes)."""
    bundle_path = Path(bundle_path)
    if not bundle_path.is_file():
        raise BundleError(f"no bundle at {bundle_path}")
    checks: list[VerifyCheck] = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-verify-") as tmp:
        try:
            root = extract(bundle_path, Path(tmp) / "bundle")
        except BundleError as error:
            checks.append(VerifyCheck("checksums", False, str(error)))
            return VerifyResult(bundle_path, tuple(checks))
        index = json.loads((root / BUNDLE_MANIFEST).read_text(encoding="utf-8"))
        files = dict(index["files"])
        checks.append(VerifyCheck("checksums", True, f"{len(files)} files match their sha256"))
        problems = _manifest_problems(root, index)
        checks.append(VerifyCheck("manifest", not problems,
                                  "; ".join(problems) or "bundle.json and manifest.json complete"))
        if problems:
            return VerifyResult(bundle_path, tuple(checks), files=files)
        findings, final = bundled_verdict(root)
        check, shape = _run_model_once(root / index["model"], index)
        checks.append(check)
        engines = _engine_files(root, index)
        if check.passed and engines:
            checks.append(_run_engines_once(root, engines, index))
    return VerifyResult(bundle_path, tuple(checks), output_shape=shape, files=files, verdict=final,
                        findings=findings)


def bundled_verdict(root: Path) -> tuple[tuple[Finding, ...], Verdict]:
    """The export's verdict from the bundle's own manifest.json, by the same rules that wrote its
    report, so a bundle cannot be shipped on a verdict nobody saw."""
    from edgeprune.report.rules import evaluate, verdict

    findings = tuple(evaluate(_read_manifest(root)))
    return findings, verdict(findings)


def _manifest_problems(root: Path, index: Mapping[str, Any]) -> list[str]:
    problems = []
    try:
        input_spec_from(index.get("input") or {}, BUNDLE_MANIFEST)
    except (BundleError, TypeError, ValueError) as error:
        problems.append(str(error))
    try:
        _read_manifest(root)
    except BundleError as error:
        problems.append(str(error))
    return problems


def _run_model_once(model_path: Path, index: Mapping[str, Any]) -> tuple[VerifyCheck, Optional[tuple]]:
    """Feed one normalised-looking random image through ONNX Runtime on the CPU."""
    import numpy as np
    import onnxruntime

    num_classes = index["num_classes"]
    try:
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        model_input = session.get_inputs()[0]
        dims = [int(d) for d in index["input"]["shape"]]
        shape = [1, *dims] if len(dims) == len(model_input.shape) - 1 else [1, *dims[1:]]
        batch = np.random.default_rng(0).standard_normal(shape).astype(index["input"]["dtype"])
        output = np.asarray(session.run(None, {model_input.name: batch})[0])
    except Exception as error:  # noqa: BLE001 - any runtime failure is the check's result
        return VerifyCheck("model runs", False, f"{index['model']} failed in onnxruntime: {error}"), None
    shape_out = tuple(int(d) for d in output.shape)
    if shape_out != (1, num_classes):
        return VerifyCheck("model runs", False,
                           f"output shape {shape_out}, expected (1, {num_classes})"), shape_out
    if not np.isfinite(output).all():
        return VerifyCheck("model runs", False, "output has NaN or infinite values"), shape_out
    return VerifyCheck("model runs", True,
                       f"one input of shape {tuple(shape)} gave finite output {shape_out}"), shape_out


def _engine_files(root: Path, index: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(engine name, relative path) of every engine file the manifest lists besides the model."""
    records = _read_manifest(root).engines
    return [(e.name, str(e.path)) for e in records if str(e.path) != index["model"] and str(e.path) in index["files"]]


def _run_engines_once(root: Path, engines: list[tuple[str, str]], index: Mapping[str, Any]) -> VerifyCheck:
    """Each bundled engine file run once on one random input through its own back end; an engine
    whose runtime is not installed here is named as not run, which is not a failure."""
    import numpy as np

    from edgeprune.engines import BACKENDS, load_runner
    from edgeprune.errors import EdgepruneError

    dims = [int(d) for d in index["input"]["shape"]]
    batch = np.random.default_rng(0).standard_normal([1, *dims]).astype(np.float32)
    ran, not_here, failed = [], [], []
    for name, rel in engines:
        backend = BACKENDS.get(name.removesuffix("-int8"))
        reason = backend.unavailable_reason(None) if backend is not None else None
        if reason is not None:
            not_here.append(f"{rel} ({reason})")
            continue
        try:
            with load_runner(root / rel) as runner:
                output = np.asarray(runner.run(batch))
        except (EdgepruneError, RuntimeError, ValueError, OSError) as error:
            failed.append(f"{rel}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
            continue
        if output.shape != (1, index["num_classes"]) or not np.isfinite(output).all():
            failed.append(f"{rel}: output shape {tuple(output.shape)} or values not finite")
        else:
            ran.append(rel)
    detail = "; ".join(filter(None, [
        f"ran {', '.join(ran)} once" if ran else "",
        f"not run here: {', '.join(not_here)}" if not_here else "",
        f"failed: {', '.join(failed)}" if failed else ""]))
    return VerifyCheck(ENGINE_CHECK, not failed, detail)


# --- helpers ---------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> Manifest:
    """The folder's manifest through the one reader; any problem with it is a BundleError."""
    try:
        return read_manifest(folder)
    except ManifestError as error:
        raise BundleError(str(error)) from None


def _num_classes(manifest: Manifest, spec: InputSpec, source: str) -> int:
    value = manifest.num_classes
    if value is not None and value >= 1:
        return value
    if spec.class_names:
        return len(spec.class_names)
    raise BundleError(f"{source} has neither num_classes nor class_names; re-run the export")
