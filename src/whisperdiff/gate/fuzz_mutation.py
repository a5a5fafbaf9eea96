"""What a fuzz mutation is, and the trace-file helpers every kind of mutation uses: read and write the
manifest, take a .npy apart and build its header, and change an op's values with a consistent digest."""

from __future__ import annotations

import ast
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperdiff.store.digest import digest_fields
from whisperdiff.store.trace import MANIFEST

SENTINEL_ENV = "WHISPERDIFF_FUZZ_SENTINEL"  # a pickled payload writes this file if anything unpickles it


@dataclass
class Mutation:
    kind: str
    expect: str  # "error", "finding" or "same" (see whisperdiff.gate.fuzz)
    op: str | None
    detail: str
    apply: Callable[[Path], None]
    side: str = "b"  # which trace of the pair it damages: "b" (the candidate) or "a" (the reference)

    def __str__(self) -> str:
        return f"{self.kind}({self.side}: {self.op or 'manifest'}: {self.detail})"


Maker = Callable[[random.Random], Mutation]  # draws one mutation of a kind


def read_manifest(trace: Path) -> dict:
    return json.loads((trace / MANIFEST).read_text())


def write_manifest(trace: Path, m: dict) -> None:
    (trace / MANIFEST).write_text(json.dumps(m, indent=1))


def npy_parts(file: Path) -> tuple[bytes, bytes, dict]:
    """(header bytes, data bytes, header dict) of a v1 .npy written by the trace writer."""
    raw = file.read_bytes()
    n = struct.unpack("<H", raw[8:10])[0]
    header = raw[: 10 + n]
    fields = ast.literal_eval(header[10:].decode("latin1"))
    return header, raw[10 + n :], fields


def npy_header(descr: str, fortran: bool, shape: tuple) -> bytes:
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {tuple(shape)!r}, }}"
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def flip_bit(file: Path, part: str, where: float, bit: int) -> None:
    """Flip `bit` of the byte at fraction `where` of the .npy's "header" or "data"."""
    header, data, _ = npy_parts(file)
    parts = {"header": bytearray(header), "data": bytearray(data)}
    parts[part][int(where * (len(parts[part]) - 1))] ^= 1 << bit
    file.write_bytes(bytes(parts["header"]) + bytes(parts["data"]))


def rewrite_values(trace: Path, op: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """Change op's values and re-write its file and digest consistently: only the numbers are wrong."""
    m = read_manifest(trace)
    entry = next(o for o in m["ops"] if o["name"] == op)
    file = trace / entry["file"]
    value = np.ascontiguousarray(fn(np.load(file).copy()))
    with open(file, "wb") as f:
        np.lib.format.write_array(f, value, allow_pickle=False)
        entry["file_bytes"] = f.tell()
    entry.update(digest_fields(value, entry))
    write_manifest(trace, m)


def set_path(m: dict, path: tuple, value) -> None:
    node = m
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
