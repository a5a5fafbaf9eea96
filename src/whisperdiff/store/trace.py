"""The trace store: one directory per run.

    traces/NAME/
        manifest.json        schema, provenance (model, weights sha256, input sha256, versions), ops in order
        tensors/OP.npy       one NumPy .npy per op (never pickle), written as the run produces it

A trace is built in a hidden sibling directory (.NAME.partial-PID) and renamed into place only after
its manifest is written, so an interrupted run never looks complete: a directory without a manifest
is listed as incomplete, and a tensor file that is missing or shorter than the manifest says is an
error on read. Tensors are read lazily, memory-mapped.

Reading is inert and verified, the way git reads objects: the manifest is checked against a schema
(types, duplicates, an empty op list, the schema version); only regular files inside the trace are
opened (no symlinks, FIFOs or devices, no path the manifest makes up); each .npy header must say
exactly what the manifest says (dtype with byte order, shape, C order, size); and each tensor's
sha256 is computed as it is first mapped, so a damaged trace is an error naming the op and the file,
never a number.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import signal
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.provenance import sha256_bytes

SCHEMA = "whisperdiff.trace"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TENSOR_DIR = "tensors"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
_TENSOR_FILE = re.compile(r"^tensors/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}\.npy$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# dtypes a trace may hold (what runners record); anything else in a manifest is damage
DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)
MAX_MANIFEST_BYTES = 256 << 20
MAX_NDIM = 8
COMMITTED: list[Path] = []  # traces this process renamed into place (the CLI's interrupt message names them)
_writing = 0  # TraceWriters (and other atomic writes) in progress: a signal must unwind through them


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writing() -> bool:
    """True while an atomic write is in progress (a signal must then unwind through its clean-up)."""
    return _writing > 0


@contextmanager
def atomic_write():
    """Mark a stretch of code as writing something that must be cleaned up if a signal arrives."""
    global _writing
    _writing += 1
    try:
        yield
    finally:
        _writing -= 1


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file (report, CSV, JUnit, tolerances) so that a half-written one never replaces a good one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with atomic_write():  # a signal now unwinds through the clean-up below
        try:
            tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
            tmp.replace(path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise WhisperdiffError(f"cannot write {path}: {e.strerror}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM for the few renames of a commit, then deliver them: the renames are
    never split by an interrupt, so the old trace is either replaced or still in place."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for signum in caught[:1]:
            handler = saved[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL and signum == signal.SIGTERM:
                raise KeyboardInterrupt


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _leftovers(path: Path) -> list[tuple[Path, str, int]]:
    """(directory, "partial" or "old", pid) for every leftover of an interrupted write of `path`."""
    found = []
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.(partial|old)-(\d{1,10})$")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink():
            found.append((entry, m.group(1), int(m.group(2))))
    return found


def clean_leftovers(path: str | Path) -> list[str]:
    """Tidy what killed runs left next to trace `path`: a previous trace parked as .NAME.old-PID goes back
    to NAME when NAME is missing (else it is removed); .NAME.partial-PID is removed. Only leftovers of
    processes that are gone are touched. Returns what was done, one phrase each."""
    path = Path(path)
    done = []
    for entry, kind, pid in sorted(_leftovers(path), key=lambda x: x[1] != "old"):
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if kind == "old" and not path.exists() and (entry / MANIFEST).is_file():
            os.replace(entry, path)
            done.append(f"restored the previous {path.name} from {entry.name}")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry.name}")
    return done


class TraceWriter:
    """Writes one trace atomically. Use as a context manager; `record` each op in order.

    On success the finished directory replaces `path` (an older trace there is removed only after
    the new one is in place); on any exception, KeyboardInterrupt included, nothing is left behind
    and an older trace at `path` is still there under its name. Leftovers of killed runs are tidied
    first (clean_leftovers)."""

    def __init__(self, path: str | Path, manifest: dict):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise WhisperdiffError(
                f"refusing to overwrite {self.path}: it is a file, not a trace directory; choose another --out"
            )
        if self.path.exists() and not (self.path / MANIFEST).exists() and any(self.path.iterdir()):
            raise WhisperdiffError(
                f"refusing to overwrite {self.path}: it exists and is not a whisperdiff trace; choose another --out"
            )
        self.manifest = dict(manifest)
        self.ops: list[dict] = []
        self.tmp = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"
        self._active = False

    def __enter__(self) -> TraceWriter:
        global _writing
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise WhisperdiffError(f"cannot write {self.path}: {self.path.parent} is not a directory") from None
        clean_leftovers(self.path)
        shutil.rmtree(self.tmp, ignore_errors=True)
        _writing += 1
        self._active = True
        try:
            (self.tmp / TENSOR_DIR).mkdir(parents=True)
        except BaseException:
            self._done()
            raise
        return self

    def _done(self) -> None:
        global _writing
        if self._active:
            self._active = False
            _writing -= 1

    def record(self, name: str, array: np.ndarray) -> None:
        """Write one op's tensor to disk now (so memory does not grow with the op count)."""
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise WhisperdiffError(f"op name {name!r} is not usable as a file name (letters, digits, _ . - only)")
        if any(op["name"] == name for op in self.ops):
            raise WhisperdiffError(f"op {name!r} recorded twice in one trace")
        array = np.ascontiguousarray(array)
        if array.dtype.name not in DTYPES or array.ndim > MAX_NDIM:
            raise WhisperdiffError(
                f"op {name!r}: cannot store {array.dtype.name} with {array.ndim} dims in a trace "
                f"(one of {', '.join(DTYPES)}, at most {MAX_NDIM} dims)"
            )
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("="))
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
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return
            self._commit()
        finally:
            self._done()

    def _commit(self) -> None:
        old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
        try:
            manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **self.manifest, "ops": self.ops}
            with open(self.tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(self.tmp)
            with _signals_deferred():  # the two renames happen together or not at all
                moved = False
                if self.path.exists():
                    os.replace(self.path, old)
                    moved = True
                try:
                    os.replace(self.tmp, self.path)
                except BaseException:
                    if moved:
                        os.replace(old, self.path)  # put the previous trace back under its name
                    raise
                COMMITTED.append(self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:
            if old.exists() and self.path.exists():
                shutil.rmtree(old, ignore_errors=True)


class Trace:
    """A trace on disk: `.manifest`, `.ops` (names in order) and lazy, memory-mapped `trace[op]`.

    Each op's sha256 is checked the first time it is mapped (the hash reads the pages the analysis
    then works on, so it costs no extra pass over the disk); later reads of the same unchanged file
    are not hashed again. A reader that goes through the ops in order (compare, check, show) has the
    next op hashed on a second core while it works on this one. verify=False skips the digests
    (benchmarks only): headers, sizes and file kinds are still checked."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._ops = {op["name"]: op for op in self.manifest["ops"]}
        self._verify = verify
        self._verified: dict[str, tuple] = {}  # op -> (dev, inode, size, mtime) of the file that matched
        self._order = {name: i for i, name in enumerate(self._ops)}
        self._ahead: dict[str, Future] = {}  # op -> (stamp, digest) being computed in the background
        self._last_new: str | None = None  # the op hashed last, to see a reader going in order

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
        with open_tensor(self.path, op) as (f, offset, st):
            dtype, shape = np.dtype(op["dtype"]), tuple(op["shape"])
            if op["nbytes"] == 0:
                array = np.zeros(shape, dtype)
                array.flags.writeable = False
            else:
                try:
                    array = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")
                except (OSError, ValueError) as e:
                    raise _damaged(self.path, op, f"cannot be mapped ({e})") from None
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._verify and self._verified.get(name) != stamp:
            ahead = self._ahead.pop(name, None)
            found = ahead.result() if ahead is not None else None
            digest = found[1] if found is not None and found[0] == stamp else sha256_bytes(array)
            if digest != op["sha256"]:
                raise _damaged(self.path, op, "does not match its sha256 in the manifest (bit rot or an edit)")
            self._verified[name] = stamp
            self._hash_ahead(name)
        return array

    def _hash_ahead(self, name: str) -> None:
        """When ops are first read in order, start hashing the next one on another thread (hashlib
        releases the GIL), so its digest is ready when the reader gets there."""
        i = self._order[name]
        in_order = self._last_new is not None and self._order[self._last_new] == i - 1
        self._last_new = name
        if not in_order or i + 1 >= len(self._order):
            return
        following = self.ops[i + 1]
        if following not in self._ahead and following not in self._verified:
            self._ahead[following] = _hasher().submit(_hash_file, self.path, self._ops[following])

    def verify(self, name: str) -> None:
        """Check an op's bytes against the sha256 in the manifest now (catches bit rot and edits)."""
        self._verified.pop(name, None)
        verify, self._verify = self._verify, True
        try:
            self[name]
        finally:
            self._verify = verify

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
        return pd.DataFrame(rows, index=[r["op"] for r in rows])  # t.summary().loc["ln_post"], as compare's table

    def __repr__(self) -> str:
        m = self.manifest
        return f"Trace({str(self.path)!r}, impl={m.get('impl')!r}, model={m.get('model', {}).get('id')!r}, ops={len(self)})"


_HASHER: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    global _HASHER
    if _HASHER is None:
        _HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="whisperdiff-sha256")
    return _HASHER


def _hash_file(path: Path, op: dict) -> tuple[tuple, str] | None:
    """(stamp, sha256) of an op's data, or None when it cannot be read (the reader then says why)."""
    try:
        with open_tensor(path, op) as (f, offset, st):
            # read(), not a second mapping: the copy is cheap, and the reader's own mapping then finds the
            # pages in the page cache; the file is read from disk once
            h, buffer = hashlib.sha256(), bytearray(1 << 22)
            view, left = memoryview(buffer), op["nbytes"]
            f.seek(offset)
            while left > 0:
                n = f.readinto(view[: min(left, len(buffer))])
                if not n:
                    return None
                h.update(view[:n])
                left -= n
            return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), h.hexdigest()
    except Exception:
        return None


def _damaged(path: Path, op: dict, what: str) -> WhisperdiffError:
    return WhisperdiffError(f"{path} is damaged: op {op['name']!r} ({op['file']}) {what}; re-run `whisperdiff trace`")


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def open_inside(root: Path, rel: str) -> int:
    """A read-only descriptor of regular file `rel` inside directory `root`: no component may be a
    symlink, and the file must be a regular file (never a FIFO, socket or device: opening is
    non-blocking, then checked). Raises OSError (ELOOP for a link, EFTYPE-like EINVAL for a non-file)."""
    parts = rel.split("/")
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            next_fd = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd
            )
            os.close(dir_fd)
            dir_fd = next_fd
        fd = os.open(parts[-1], _OPEN_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def _why(e: OSError) -> str:
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return "is a symlink or sits under one (only regular files inside the trace are read)"
    if e.errno == errno.EINVAL:
        return "is not a regular file (a FIFO, socket, device or directory)"
    if e.errno == errno.ENOENT:
        return "is missing"
    return f"cannot be opened ({e.strerror or e})"


@contextmanager
def open_tensor(path: Path, op: dict):
    """(file, data offset, stat) of an op's .npy, after checking its header against the manifest:
    magic, dtype (byte order included), shape, C order, no pickled objects, and the exact file size."""
    try:
        fd = open_inside(path, op["file"])
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise WhisperdiffError(
                f"{path} is damaged: tensor file {op['file']} is missing (op {op['name']!r}); re-run `whisperdiff trace`"
            ) from None
        raise _damaged(path, op, _why(e)) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unknown .npy version {version}")
        except Exception as e:  # any header that numpy cannot parse is damage, whatever the exception
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise _damaged(path, op, f"has a truncated or corrupt .npy header ({first})") from None
        offset = f.tell()
        want = np.dtype(op["dtype"])
        if dtype.hasobject:
            raise _damaged(path, op, "holds pickled Python objects, which whisperdiff never loads")
        if dtype != want:
            raise _damaged(
                path,
                op,
                f"holds {dtype.str} ({dtype.name}, byte order {dtype.byteorder!r}), "
                f"the manifest says {want.str} ({want.name})",
            )
        if list(shape) != op["shape"]:
            raise _damaged(path, op, f"holds shape {list(shape)}, the manifest says {op['shape']}")
        if fortran:
            raise _damaged(path, op, "is stored in Fortran order; traces hold C-order arrays")
        if st.st_size != offset + op["nbytes"]:
            how = "truncated or corrupt" if st.st_size < offset + op["nbytes"] else "longer than its header says"
            raise _damaged(path, op, f"is {how} ({st.st_size} bytes, header and manifest say {offset + op['nbytes']})")
        if "file_bytes" in op and st.st_size != op["file_bytes"]:
            raise _damaged(path, op, f"is {st.st_size} bytes, the manifest says {op['file_bytes']}")
        yield f, offset, st


def read_manifest(path: Path) -> dict:
    """The manifest of a trace directory, checked against the schema; every failure is a one-line error."""
    try:
        if not path.exists():
            raise WhisperdiffError(f"trace {path} does not exist; list traces with `whisperdiff ls`")
        if not path.is_dir():
            raise WhisperdiffError(f"{path} is not a trace directory; a trace is a folder made by `whisperdiff trace`")
    except (OSError, ValueError) as e:  # a self-symlink, a NUL in the path, a name too long
        raise WhisperdiffError(f"cannot open trace {path}: {getattr(e, 'strerror', None) or e}") from None
    file = path / MANIFEST
    try:
        fd = open_inside(path, MANIFEST)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise WhisperdiffError(f"{path} is damaged: {MANIFEST} {_why(e)}") from None
        if path.name.startswith(".") and ".partial-" in path.name or (path / TENSOR_DIR).is_dir():
            raise WhisperdiffError(
                f"{path} is an incomplete trace (interrupted run, no manifest); delete it and re-run `whisperdiff trace`"
            ) from None
        raise WhisperdiffError(f"{path} is not a trace (no {MANIFEST}); make one with `whisperdiff trace`") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise WhisperdiffError(
            f"{file} is over {MAX_MANIFEST_BYTES >> 20} MB; the trace is damaged: re-run `whisperdiff trace`"
        )

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise WhisperdiffError(
            f"{file} is not valid JSON ({why}); the trace is damaged: re-run `whisperdiff trace`"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise WhisperdiffError(f"{file} is not a whisperdiff trace manifest (schema {_short(found)})")
    version = manifest.get("schema_version")
    if not _is_int(version) or version < 1:
        raise WhisperdiffError(f"{file} has no valid schema_version; the trace is damaged: re-run `whisperdiff trace`")
    if version > SCHEMA_VERSION:
        raise WhisperdiffError(
            f"{path} was written by a newer whisperdiff (trace schema {version}, this one reads up to {SCHEMA_VERSION}); "
            "upgrade whisperdiff: pip install -U whisperdiff"
        )
    problem = _schema_problem(manifest)
    if problem:
        raise WhisperdiffError(f"{file} is damaged: {problem}; re-run `whisperdiff trace`")
    return manifest


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad_string(value, where: str, depth: int = 0) -> str | None:
    """Strings a trace never holds: NUL characters and lone surrogates (they break paths and output)."""
    if depth > 32:
        return f"{where} is nested too deeply"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where} holds a NUL character"
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            return f"{where} holds a lone surrogate (not valid Unicode)"
        return None
    if isinstance(value, dict):
        items = [(f"{where} key", k) for k in value] + [(f"{where}.{k}"[:80], v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for place, item in items:
        if (bad := _bad_string(item, place, depth + 1)) is not None:
            return bad
    return None


# Top-level keys: the type each must have when present, and whether it must be there.
_TOP = {
    "impl": (str, True),
    "device": (str, False),
    "dtype": (str, False),
    "runner": (dict, False),
    "model": (dict, False),
    "input": (dict, False),
    "taps": (str, False),
    "injected": (list, False),
    "versions": (dict, False),
    "run": (dict, False),
    "transcript": (dict, False),
    "ops": (list, True),
}
_MODEL = {"id": str, "source": str, "dims": dict, "weights_sha256": str, "tensor_sha256": dict}
_INPUT = {"path": str, "sha256": str, "mel_sha256": str, "kind": str, "frontend": str, "window": int, "n_windows": int}


def _schema_problem(m: dict) -> str | None:
    """What is wrong with a parsed manifest against the schema, or None."""
    if (bad := _bad_string(m, "manifest")) is not None:
        return bad
    for key, (kind, required) in _TOP.items():
        if key not in m:
            if required:
                return f"no {key!r} entry"
            continue
        if not isinstance(m[key], kind) or (kind is str and not m[key]):
            return f"{key!r} is {_short(m[key])}, not a {'non-empty ' if kind is str else ''}{kind.__name__}"
    for section, spec in (("model", _MODEL), ("input", _INPUT)):
        for key, kind in spec.items():
            value = m.get(section, {}).get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                return f"{section}.{key} is {_short(value)}, of the wrong type"
    weights = m.get("model", {}).get("weights_sha256")
    if weights is not None and not _SHA256.match(weights):
        return "model.weights_sha256 is not a sha256 digest"
    if (dims := m.get("model", {}).get("dims")) is not None:
        from whisperdiff.inputs.models import dims_problem

        if (why := dims_problem(dims)) is not None:
            return f"model.dims: {why}"
    for i, fault in enumerate(m.get("injected", [])):
        if not isinstance(fault, dict) or not isinstance(fault.get("name"), str):
            return f"injected[{i}] is not a fault entry with a name"
    if "transcript" in m and not isinstance(m["transcript"].get("text"), str):
        return "transcript.text is not a string"
    ops = m["ops"]
    if not ops:
        return "the op list is empty (a trace holds at least one op)"
    names, files = set(), set()
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            return f"ops[{i}] is {_short(op)}, not an op entry"
        name = op.get("name")  # a label, shown escaped; only `file` names something on disk
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            return f"ops[{i}] has no usable name ({_short(name)})"
        if name in names:
            return f"op {name!r} is listed twice"
        names.add(name)
        file = op.get("file")
        if not isinstance(file, str) or not _TENSOR_FILE.match(file):
            return f"op {name!r} points outside the trace or at no .npy file ({_short(file)}; a trace names tensors/OP.npy)"
        if file in files:
            return f"op {name!r} shares its file {file} with another op"
        files.add(file)
        shape = op.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(_is_int(d) and 0 <= d < 1 << 40 for d in shape)
        ):
            return f"op {name!r} has shape {_short(shape)}, not a list of at most {MAX_NDIM} sizes >= 0"
        if op.get("dtype") not in DTYPES:
            return f"op {name!r} has dtype {_short(op.get('dtype'))}, not one of {', '.join(DTYPES)}"
        nbytes = math.prod(shape) * np.dtype(op["dtype"]).itemsize
        if not _is_int(op.get("nbytes")) or op["nbytes"] != nbytes:
            return f"op {name!r} says nbytes {_short(op.get('nbytes'))}, but {op['dtype']}{shape} is {nbytes} bytes"
        if "file_bytes" in op and (
            not _is_int(op["file_bytes"]) or not nbytes <= op["file_bytes"] <= nbytes + (1 << 20)
        ):
            return f"op {name!r} has file_bytes {_short(op['file_bytes'])}, which cannot hold {nbytes} bytes of data"
        if not isinstance(op.get("sha256"), str) or not _SHA256.match(op["sha256"]):
            return f"op {name!r} has no sha256 digest (each op's bytes are verified against it)"
    return None


def load_trace(path: str | Path, verify: bool = True) -> Trace:
    return Trace(path, verify=verify)


@dataclass
class Listing:
    path: Path
    status: str  # "complete", "incomplete[: why]" or "damaged: <why>"
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
    """The cheap checks of `ls`: every tensor a regular file inside the trace, its header what the
    manifest says, its size exact. (A flipped bit in the data shows only when read: `show` reads all.)"""
    for op in manifest["ops"]:
        try:
            with open_tensor(path, op):
                pass
        except WhisperdiffError as e:
            text = str(e)
            if "is missing" in text:
                return f"damaged: {op['file']} missing"
            if "truncated" in text or "bytes, the manifest says" in text or "longer than" in text:
                return f"damaged: {op['file']} truncated or altered"
            return "damaged: " + text.split(" is damaged: ", 1)[-1].removesuffix("; re-run `whisperdiff trace`")
    return "complete"


_LEFTOVER = re.compile(r"^\.(.+)\.(partial|old)-\d{1,10}$")


def _listing(path: Path) -> Listing | None:
    leftover = _LEFTOVER.match(path.name)
    if leftover:  # never listed as complete, whatever it holds
        if leftover.group(2) == "partial":
            return Listing(path, "incomplete", None)
        return Listing(
            path,
            f"incomplete: the previous {leftover.group(1)}, kept by an interrupted replace; "
            "the next trace to that name restores or removes it",
            None,
        )
    if not (path / MANIFEST).exists() and not (path / MANIFEST).is_symlink():
        return Listing(path, "incomplete", None) if (path / TENSOR_DIR).is_dir() else None
    try:
        manifest = read_manifest(path)
    except WhisperdiffError as e:
        return Listing(path, f"damaged: {e}", None)
    return Listing(path, _check_files(path, manifest), manifest)


def list_traces(directory: str | Path = "traces") -> list[Listing]:
    """Every trace under `directory` (or `directory` itself if it is one), with its status. One bad
    entry is listed as damaged; it never stops the others from being listed."""
    directory = Path(directory)
    try:
        if not directory.is_dir():
            raise WhisperdiffError(f"{directory} is not a directory; pass the folder that holds your traces")
        here = (directory / MANIFEST).exists()
        entries = [directory] if here else sorted(directory.iterdir())
    except (OSError, ValueError) as e:
        raise WhisperdiffError(f"cannot list {directory}: {getattr(e, 'strerror', None) or e}") from None
    listings = []
    for path in entries:
        try:
            if not path.is_dir():
                continue
            item = _listing(path)
        except (OSError, ValueError, WhisperdiffError) as e:
            item = Listing(path, f"damaged: {getattr(e, 'strerror', None) or e}", None)
        if item is not None:
            listings.append(item)
    return listings
