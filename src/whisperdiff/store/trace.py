"""The trace store: one directory per run.

    traces/NAME/
        manifest.json        schema, provenance (model, weights sha256, input sha256, versions), ops in order
                             with each one's digest
        tensors/OP.npy       one NumPy .npy per op (never pickle), written as the run produces it

A trace is built in a hidden sibling directory (.NAME.partial-PID) and renamed into place only after
its manifest is written, so an interrupted run never looks complete: a directory without a manifest
is listed as incomplete, and a tensor file that is missing or shorter than the manifest says is an
error on read. Tensors are read lazily: memory-mapped (`trace[op]`, `read`), or copied a piece at a time
into a caller's buffer (`chunks`: compare's measurement, which works on each piece while it is in cache).

Reading is inert and verified, the way git reads objects: the manifest is checked against its schema
(manifest.py); only regular files inside the trace are opened and each .npy header must say exactly
what the manifest says (files.py); and each tensor's digest (XXH3-128, digest.py) is computed as it is
first read, so a damaged trace is an error naming the op and the file, never a number. `ls` is
listing.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.store.digest import array_digest, digest_fields, digest_kind, hasher
from whisperdiff.store.files import (
    MANIFEST,
    TENSOR_DIR,
    damaged,
    digest_mismatch,
    open_inside,
    open_tensor,
    read_manifest,
    read_pieces,
    stamp_of,
)
from whisperdiff.store.listing import Listing, list_traces
from whisperdiff.store.manifest import DTYPES, MAX_NDIM, SAFE_NAME, SCHEMA, SCHEMA_VERSION, Manifest, ManifestProblem

__all__ = ["MANIFEST", "Listing", "Trace", "TraceWriter", "list_traces", "load_trace", "open_inside", "read_manifest"]

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
        """manifest: the draft from manifest.build_manifest (or any mapping of the same sections), which
        the capture path may complete while it records (timings, transcript); checked at commit."""
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
        if not isinstance(name, str) or not SAFE_NAME.match(name):
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
        self.ops.append(
            {
                "name": name,
                "file": rel,
                "shape": list(array.shape),
                "dtype": array.dtype.name,
                "nbytes": int(array.nbytes),
                "file_bytes": file_bytes,
                **digest_fields(array),
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
            try:  # what the reader would call damaged is never written
                Manifest.from_json(json.loads(json.dumps(manifest, allow_nan=False)))
            except (ManifestProblem, ValueError, TypeError) as e:
                raise WhisperdiffError(f"cannot write {self.path}: its manifest would be damaged ({e})") from None
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
    """A trace on disk: `.manifest` (a typed Manifest), `.ops` (names in order) and lazy, memory-mapped `trace[op]`.

    Each op's digest is checked the first time it is mapped (the hash reads the pages the analysis
    then works on, so it costs no extra pass over the disk); later reads of the same unchanged file
    are not hashed again. A reader that goes through the ops in order (compare, check, show) has the
    next op hashed on a second core while it works on this one. verify=False skips the digests
    (benchmarks only): headers, sizes and file kinds are still checked."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        self._ops = {op["name"]: op for op in self.manifest["ops"]}
        self._verify = verify
        self._verified: dict[str, tuple] = {}  # op -> (dev, inode, size, mtime) of the file that matched
        self._names = list(self._ops)
        self._order = {name: i for i, name in enumerate(self._names)}
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
        ahead = self._ahead.pop(name, None) if self._verify else None
        found = ahead.result() if ahead is not None else None
        if found is not None and _stamp(self.path, op) == found[1]:  # hashed ahead from the same file: its
            array, stamp, hashed = found  # mapping (opened and checked there) is taken over, not made again
        else:
            array, stamp = _mapped(self.path, op)
            hashed = found[2] if found is not None and found[1] == stamp else None
        if self._check(name, op, array, stamp, hashed):
            self._hash_ahead(name)
        return array

    def read(self, name: str) -> np.ndarray:
        """An op's array, mapped and checked now, on any thread (trace[op] is for one reader going in order)."""
        op = self.info(name)
        array, stamp = _mapped(self.path, op)
        self._check(name, op, array, stamp)
        return array

    def _check(self, name: str, op: dict, array: np.ndarray, stamp: tuple, hashed: str | None = None) -> bool:
        """Check the op's digest (`hashed`: already taken of `array`) against the manifest, unless this unchanged
        file was checked before. True where it was checked now."""
        if not self._verify or self._verified.get(name) == stamp:
            return False
        kind = digest_kind(op)
        if (hashed or array_digest(array, kind)) != op[kind]:
            raise digest_mismatch(self.path, op, kind)
        self._verified[name] = stamp
        return True

    def chunks(self, name: str, chunk_bytes: int, into: np.ndarray) -> Iterator[np.ndarray]:
        """An op's data in consecutive pieces of `chunk_bytes` (the last one shorter), each copied into `into`
        (a uint8 buffer of at least chunk_bytes, reused for every piece: each is a view of it, good until the
        next), on any thread. The pieces are hashed as they are read, so a reader that works on each piece
        while it is in cache reads the op once from memory (a mapping instead faults in every page, and a
        whole-op buffer spills the cache). The digest is checked before the last piece is given: a damaged
        op raises from this iterator, so whatever the caller made of the earlier pieces is never used."""
        op = self.info(name)
        if chunk_bytes < 1 or into.dtype != np.uint8 or into.ndim != 1 or into.size < min(chunk_bytes, op["nbytes"]):
            raise ValueError(f"chunks: `into` must be a 1-D uint8 array of at least {chunk_bytes} bytes")
        with open_tensor(self.path, op) as (f, offset, st):
            stamp, kind = stamp_of(st), digest_kind(op)
            digest = hasher(kind) if self._verify and self._verified.get(name) != stamp else None
            if op["nbytes"] == 0 and digest is not None and digest.hexdigest() != op[kind]:
                raise digest_mismatch(self.path, op, kind)
            done = 0
            for piece in read_pieces(self.path, op, f, offset, into[:chunk_bytes]):
                done += piece.size
                if digest is not None:
                    digest.update(piece)
                    if done == op["nbytes"] and digest.hexdigest() != op[kind]:
                        raise digest_mismatch(self.path, op, kind)
                piece.flags.writeable = False  # as a mapping is: nothing downstream writes to a trace's values
                yield piece
            if digest is not None:
                self._verified[name] = stamp

    def _hash_ahead(self, name: str) -> None:
        """When ops are first read in order, start hashing the next one on another thread (hashlib and
        xxhash release the GIL), so its digest is ready when the reader gets there."""
        i = self._order[name]
        in_order = self._last_new is not None and self._order[self._last_new] == i - 1
        self._last_new = name
        if not in_order:
            return
        for following in self._names[i + 1 : i + 1 + HASH_AHEAD]:
            if following not in self._ahead and following not in self._verified:
                self._ahead[following] = _hasher().submit(_hash_file, self.path, self._ops[following])

    def verify(self, name: str) -> None:
        """Check an op's bytes against the digest in the manifest now (catches bit rot and edits)."""
        self._verified.pop(name, None)
        verify, self._verify = self._verify, True
        try:
            self[name]
        finally:
            self._verify = verify

    @property
    def nbytes(self) -> int:
        return self.manifest.nbytes

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
        return f"Trace({str(self.path)!r}, impl={m.impl!r}, model={m.model.id!r}, ops={len(self)})"


HASH_AHEAD = 2  # ops hashed ahead of an in-order reader
_HASHER: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    global _HASHER
    if _HASHER is None:
        _HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="whisperdiff-digest")
    return _HASHER


def _mapped(path: Path, op: dict) -> tuple[np.ndarray, tuple]:
    """A read-only memory map of an op's data (its header checked first) and the file's (dev, inode, size,
    mtime): the stamp that says a digest taken of it still holds."""
    with open_tensor(path, op) as (f, offset, st):
        dtype, shape = np.dtype(op["dtype"]), tuple(op["shape"])
        if op["nbytes"] == 0:
            array = np.zeros(shape, dtype)
            array.flags.writeable = False
        else:
            try:
                array = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")
            except (OSError, ValueError) as e:
                raise damaged(path, op, f"cannot be mapped ({e})") from None
    return array, stamp_of(st)


def release(arrays: list) -> None:
    """Drop the caller's last references to these mappings on the digest thread, emptying `arrays`: unmapping
    a large op tears down its page tables (~0.2 s of a large-v3 compare's 9 GB), which that thread then pays
    while the caller goes on. The caller must hold no other reference to them."""
    if arrays:
        _hasher().submit(arrays.clear)  # the list is the work item's: whichever thread clears it last unmaps


def _stamp(path: Path, op: dict) -> tuple | None:
    """The stamp _mapped would give the op's file now, from one lstat (None if there is none): where it equals a
    mapping's, that mapping is of this very file (a symlink put in its place has its own inode)."""
    try:
        st = os.stat(path / op["file"], follow_symlinks=False)
    except (OSError, ValueError):
        return None
    return stamp_of(st)


def _hash_file(path: Path, op: dict) -> tuple[np.ndarray, tuple, str] | None:
    """(mapping, stamp, digest) of an op's data, or None when it cannot be read (the reader then says why).
    The reader takes the mapping over: its pages are mapped once, by the hash."""
    try:
        array, stamp = _mapped(path, op)
        return array, stamp, array_digest(array, digest_kind(op))
    except Exception:
        return None


def load_trace(path: str | Path, verify: bool = True) -> Trace:
    return Trace(path, verify=verify)
