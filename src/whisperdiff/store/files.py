"""Reading a trace's files inertly, the way git reads objects: only regular files inside the trace are
opened (no symlinks, FIFOs or devices, no path the manifest makes up); the manifest is checked against
its schema (manifest.py); each .npy header must say exactly what the manifest says (dtype with byte
order, shape, C order, size). Every failure is a one-line error naming the trace, the op and the file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.store.digest import digest_kind, hasher
from whisperdiff.store.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest

MANIFEST = "manifest.json"
TENSOR_DIR = "tensors"


def damaged(path: Path, op: dict, what: str) -> WhisperdiffError:
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


# One entry of the header dict: a quoted key, then a quoted string, a bool or a tuple of integers.
_NPY_ENTRY = re.compile(r"\s*'(\w+)'\s*:\s*('[^'\\]*'|True|False|\(\s*(?:\d+\s*,\s*)*(?:\d+\s*)?\))\s*(?:,|$)")
_NPY_MAX_HEADER = 1 << 16


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy file positioned at its start; leaves it at the data.
    Parsed here, not by numpy's reader: that one calls ast.literal_eval, which on Python 3.11 fails
    spuriously when two threads parse at once (the hashing threads do), and a strict grammar of
    three plain entries is all a trace ever writes."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file (bad magic)")
    major = magic[6]
    if major == 1:
        size = int.from_bytes(f.read(2), "little")
    elif major in (2, 3):
        size = int.from_bytes(f.read(4), "little")
    else:
        raise ValueError(f"unknown .npy version {major}.{magic[7]}")
    if size > _NPY_MAX_HEADER:
        raise ValueError(f"header of {size} bytes")
    raw = f.read(size)
    if len(raw) < size:
        raise ValueError("header ends early")
    text = raw.decode("utf8" if major == 3 else "latin1").strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError("header is not a dict")
    body, entries, at = text[1:-1].strip(), {}, 0
    while at < len(body):
        m = _NPY_ENTRY.match(body, at)
        if m is None or m.group(1) in entries:
            raise ValueError(f"unexpected header text {body[at : at + 40]!r}")
        entries[m.group(1)] = m.group(2)
        at = m.end()
    if set(entries) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"header keys {sorted(entries)}, expected descr, fortran_order, shape")
    if not entries["descr"].startswith("'") or entries["fortran_order"] not in ("True", "False"):
        raise ValueError("header descr or fortran_order has the wrong type")
    if not entries["shape"].startswith("("):
        raise ValueError("header shape is not a tuple")
    shape = tuple(int(n) for n in re.findall(r"\d+", entries["shape"]))
    dtype = np.dtype(entries["descr"][1:-1])
    return shape, entries["fortran_order"] == "True", dtype


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
        raise damaged(path, op, _why(e)) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        try:
            shape, fortran, dtype = read_npy_header(f)
        except Exception as e:  # any header that cannot be parsed is damage, whatever the exception
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise damaged(path, op, f"has a truncated or corrupt .npy header ({first})") from None
        offset = f.tell()
        want = np.dtype(op["dtype"])
        if dtype.hasobject:
            raise damaged(path, op, "holds pickled Python objects, which whisperdiff never loads")
        if dtype != want:
            raise damaged(
                path,
                op,
                f"holds {dtype.str} ({dtype.name}, byte order {dtype.byteorder!r}), "
                f"the manifest says {want.str} ({want.name})",
            )
        if list(shape) != op["shape"]:
            raise damaged(path, op, f"holds shape {list(shape)}, the manifest says {op['shape']}")
        if fortran:
            raise damaged(path, op, "is stored in Fortran order; traces hold C-order arrays")
        if st.st_size != offset + op["nbytes"]:
            how = "truncated or corrupt" if st.st_size < offset + op["nbytes"] else "longer than its header says"
            raise damaged(path, op, f"is {how} ({st.st_size} bytes, header and manifest say {offset + op['nbytes']})")
        if "file_bytes" in op and st.st_size != op["file_bytes"]:
            raise damaged(path, op, f"is {st.st_size} bytes, the manifest says {op['file_bytes']}")
        yield f, offset, st


def read_manifest(path: Path) -> Manifest:
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
    return parse_manifest(raw, path, file)


def stamp_of(st: os.stat_result) -> tuple:
    """(dev, inode, size, mtime) of a file: while it is unchanged, a digest taken of it still holds."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def digest_mismatch(path: Path, op: dict, kind: str) -> WhisperdiffError:
    return damaged(path, op, f"does not match its {kind} digest in the manifest (bit rot or an edit)")


def read_pieces(path: Path, op: dict, f, offset: int, buffer: np.ndarray):
    """An op's data from open_tensor's file `f`, in consecutive pieces of the uint8 `buffer`'s size (the last
    one shorter), each read into the buffer and given as a view of it, good until the next. read(), not a
    mapping: a file cut short while it is read is an error, not a SIGBUS."""
    f.seek(offset)
    left = op["nbytes"]
    while left > 0:
        piece = buffer[: min(left, buffer.size)]
        view, done = memoryview(piece), 0
        while done < piece.size:  # a read may return less than asked (a signal, a network file system)
            try:
                n = f.readinto(view[done:])
            except OSError as e:
                raise damaged(path, op, f"cannot be read ({e.strerror})") from None
            if not n:
                raise damaged(path, op, "is truncated or corrupt (it ended while it was read)")
            done += n
        left -= piece.size
        yield piece


def tensor_digest(path: Path, op: dict) -> tuple[tuple, str]:
    """((dev, inode, size, mtime), digest) of an op's data, of the kind its entry carries, its header
    checked first (open_tensor)."""
    with open_tensor(path, op) as (f, offset, st):
        h = hasher(digest_kind(op))
        for piece in read_pieces(path, op, f, offset, np.empty(1 << 22, np.uint8)):  # `ls --verify`
            h.update(piece)
        return stamp_of(st), h.hexdigest()
