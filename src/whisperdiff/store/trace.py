"""The trace store: one directory per run.

    traces/NAME/
        manifest.json        schema, provenance (model, weights sha256, input sha256, versions), ops in order
        tensors/OP.npy       one NumPy .npy per op (never pickle), written as the run produces it

A trace is built in a hidden sibling directory (.NAME.partial-PID) and renamed into place only after
its manifest is written, so an interrupted run never looks complete: a directory without a manifest
is listed as incomplete, and a tensor file that is missing or shorter than the manifest says is an
error on read. Tensors are read lazily, memory-mapped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.provenance import sha256_bytes

SCHEMA = "whisperdiff.trace"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TENSOR_DIR = "tensors"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TraceWriter:
    """Writes one trace atomically. Use as a context manager; `record` each op in order.

    On success the finished directory replaces `path` (an older trace there is removed only after
    the new one is in place); on any exception, KeyboardInterrupt included, nothing is left behind.
    """

    def __init__(self, path: str | Path, manifest: dict):
        self.path = Path(path)
        if self.path.exists() and not (self.path / MANIFEST).exists() and any(self.path.iterdir()):
            raise WhisperdiffError(
                f"refusing to overwrite {self.path}: it exists and is not a whisperdiff trace; choose another --out"
            )
        self.manifest = dict(manifest)
        self.ops: list[dict] = []
        self.tmp = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"

    def __enter__(self) -> TraceWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / TENSOR_DIR).mkdir(parents=True)
        return self

    def record(self, name: str, array: np.ndarray) -> None:
        """Write one op's tensor to disk now (so memory does not grow with the op count)."""
        if not _SAFE_NAME.match(name):
            raise WhisperdiffError(f"op name {name!r} is not usable as a file name (letters, digits, _ . - only)")
        if any(op["name"] == name for op in self.ops):
            raise WhisperdiffError(f"op {name!r} recorded twice in one trace")
        array = np.ascontiguousarray(array)
        rel = f"{TENSOR_DIR}/{name}.npy"
        with open(self.tmp / rel, "wb") as f:
            np.lib.format.write_array(f, array, allow_pickle=False)
            file_bytes = f.tell()
        digest = sha256_bytes(array)
        self.ops.append(
            {
                "name": name,
                "file": rel,
                "shape": list(array.shape),
                "dtype": array.dtype.name,
                "nbytes": int(array.nbytes),
                "file_bytes": file_bytes,
                "sha256": digest,
            }
        )

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **self.manifest, "ops": self.ops}
            with open(self.tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(self.tmp)
            old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
            if self.path.exists():
                os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            _fsync_dir(self.path.parent)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


class Trace:
    """A trace on disk: `.manifest`, `.ops` (names in order) and lazy, memory-mapped `trace[op]`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._ops = {op["name"]: op for op in self.manifest["ops"]}

    @property
    def ops(self) -> list[str]:
        return list(self._ops)

    def __contains__(self, name: str) -> bool:
        return name in self._ops

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self):
        return iter(self._ops)

    def info(self, name: str) -> dict:
        if name not in self._ops:
            raise WhisperdiffError(
                f"{self.path} has no op {name!r}; it has {len(self._ops)} ops (see `whisperdiff show`)"
            )
        return self._ops[name]

    def __getitem__(self, name: str) -> np.memmap:
        op = self.info(name)
        file = self.path / op["file"]
        if not file.resolve().is_relative_to(self.path.resolve()):  # a manifest from elsewhere must not point outside
            raise WhisperdiffError(f"{self.path} is damaged: op {name!r} points outside the trace ({op['file']})")
        if not file.is_file():
            raise WhisperdiffError(
                f"{self.path} is damaged: tensor file {op['file']} is missing; re-run `whisperdiff trace`"
            )
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise WhisperdiffError(
                f"{self.path} is damaged: {op['file']} is truncated or corrupt ({str(e).splitlines()[0]}); re-run `whisperdiff trace`"
            ) from None
        if list(array.shape) != op["shape"] or array.dtype.name != op["dtype"]:
            raise WhisperdiffError(
                f"{self.path} is damaged: {op['file']} holds {array.dtype.name}{list(array.shape)}, "
                f"the manifest says {op['dtype']}{op['shape']}; re-run `whisperdiff trace`"
            )
        return array

    def verify(self, name: str) -> None:
        """Check an op's bytes against the sha256 in the manifest (catches bit rot and edits)."""
        array = self[name]
        if sha256_bytes(array) != self._ops[name]["sha256"]:
            raise WhisperdiffError(
                f"{self.path} is damaged: {self._ops[name]['file']} does not match its sha256; re-run `whisperdiff trace`"
            )

    @property
    def nbytes(self) -> int:
        return sum(op["nbytes"] for op in self.manifest["ops"])

    def summary(self, verify: bool = True):
        """pandas DataFrame: one row per op with shape, dtype, mean, std, min, max, NaN and Inf counts."""
        import pandas as pd

        from whisperdiff.store.stats import tensor_stats

        rows = []
        for name in self.ops:
            if verify:
                self.verify(name)
            op = self._ops[name]
            rows.append(
                {"op": name, "shape": "x".join(map(str, op["shape"])), "dtype": op["dtype"], **tensor_stats(self[name])}
            )
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        m = self.manifest
        return f"Trace({str(self.path)!r}, impl={m.get('impl')!r}, model={m.get('model', {}).get('id')!r}, ops={len(self)})"


def read_manifest(path: Path) -> dict:
    """The manifest of a trace directory, checked for schema and shape; every failure is a one-line error."""
    if not path.exists():
        raise WhisperdiffError(f"trace {path} does not exist; list traces with `whisperdiff ls`")
    if not path.is_dir():
        raise WhisperdiffError(f"{path} is not a trace directory; a trace is a folder made by `whisperdiff trace`")
    file = path / MANIFEST
    if not file.is_file():
        if path.name.startswith(".") and ".partial-" in path.name or (path / TENSOR_DIR).is_dir():
            raise WhisperdiffError(
                f"{path} is an incomplete trace (interrupted run, no manifest); delete it and re-run `whisperdiff trace`"
            )
        raise WhisperdiffError(f"{path} is not a trace (no {MANIFEST}); make one with `whisperdiff trace`")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WhisperdiffError(
            f"{file} is not valid JSON ({e}); the trace is damaged: re-run `whisperdiff trace`"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise WhisperdiffError(
            f"{file} is not a whisperdiff trace manifest (schema {manifest.get('schema') if isinstance(manifest, dict) else None!r})"
        )
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise WhisperdiffError(
            f"{file} has no integer schema_version; the trace is damaged: re-run `whisperdiff trace`"
        )
    if version > SCHEMA_VERSION:
        raise WhisperdiffError(
            f"{path} was written by a newer whisperdiff (trace schema {version}, this one reads up to {SCHEMA_VERSION}); "
            "upgrade whisperdiff: pip install -U whisperdiff"
        )
    ops = manifest.get("ops")
    if not isinstance(ops, list) or not all(
        isinstance(op, dict) and {"name", "file", "shape", "dtype"} <= op.keys() for op in ops
    ):
        raise WhisperdiffError(f"{file} has a malformed op list; the trace is damaged: re-run `whisperdiff trace`")
    return manifest


def load_trace(path: str | Path) -> Trace:
    return Trace(path)


@dataclass
class Listing:
    path: Path
    status: str  # "complete", "incomplete" or "damaged: <why>"
    manifest: dict | None

    def row(self) -> dict:
        m = self.manifest or {}
        inp = m.get("input", {})
        return {
            "trace": str(self.path),
            "status": self.status,
            "impl": m.get("impl"),
            "model": m.get("model", {}).get("id"),
            "input": Path(inp["path"]).name if inp.get("path") else None,
            "ops": len(m.get("ops", [])) if m else None,
            "bytes": sum(op.get("nbytes", 0) for op in m.get("ops", [])) if m else None,
            "created": m.get("run", {}).get("started"),
        }


def _check_files(path: Path, manifest: dict) -> str:
    for op in manifest["ops"]:
        file = path / op["file"]
        if not file.is_file():
            return f"damaged: {op['file']} missing"
        if "file_bytes" in op and file.stat().st_size != op["file_bytes"]:
            return f"damaged: {op['file']} truncated or altered"
    return "complete"


def list_traces(directory: str | Path = "traces") -> list[Listing]:
    """Every trace under `directory` (or `directory` itself if it is one), with its status."""
    directory = Path(directory)
    if not directory.is_dir():
        raise WhisperdiffError(f"{directory} is not a directory; pass the folder that holds your traces")
    candidates = (
        [directory] if (directory / MANIFEST).exists() else sorted(p for p in directory.iterdir() if p.is_dir())
    )
    listings = []
    for path in candidates:
        if not (path / MANIFEST).exists():
            if (path / TENSOR_DIR).is_dir() or ".partial-" in path.name:
                listings.append(Listing(path, "incomplete", None))
            continue
        try:
            manifest = read_manifest(path)
        except WhisperdiffError as e:
            listings.append(Listing(path, f"damaged: {e}", None))
            continue
        listings.append(Listing(path, _check_files(path, manifest), manifest))
    return listings
