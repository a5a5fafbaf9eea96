"""Fuzz mutations of the tensor files: damaged bytes and .npy headers, a pickled payload, symlinks and special
files (each must be a clean error), and values changed with their digest re-written (each must be a finding)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from whisperdiff.gate.fuzz_mutation import (
    SENTINEL_ENV,
    Maker,
    Mutation,
    flip_bit,
    npy_header,
    npy_parts,
    rewrite_values,
)
from whisperdiff.store.trace import MANIFEST


class _Payload:
    """Unpickling this calls open() on the sentinel path: proof that something ran pickled code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def file_makers(ops: list[str], files: dict[str, Path], outside: Path) -> dict[str, Maker]:
    """kind -> maker, for the trace's ops and their tensor files; symlink targets and the sentinel go in `outside`."""

    def tensor(rng) -> tuple[str, str]:
        op = rng.choice(ops)
        return op, f"tensors/{files[op].name}"

    def truncate(rng):
        op, rel = tensor(rng)
        frac = rng.random()

        def apply(t):
            f = t / rel
            data = f.read_bytes()
            f.write_bytes(data[: int(len(data) * frac * 0.999)])

        return Mutation("truncate", "error", op, f"to {frac:.0%}", apply)

    def extend(rng):
        op, rel = tensor(rng)
        extra = rng.choice([1, 4, 4096])
        return Mutation(
            "extend",
            "error",
            op,
            f"+{extra} bytes",
            lambda t: (t / rel).write_bytes((t / rel).read_bytes() + b"\0" * extra),
        )

    def bit_flip(kind: str, expect: str, part: str, where_text: str) -> Maker:
        """One bit flipped in the .npy's header or data, at a drawn place."""

        def make(rng):
            op, rel = tensor(rng)
            where, bit = rng.random(), rng.randrange(8)
            detail = f"bit {bit} at {where_text.format(where)}"
            return Mutation(kind, expect, op, detail, lambda t: flip_bit(t / rel, part, where, bit))

        return make

    body_bit = bit_flip("body-bit", "error", "data", "{:.0%} of the data")
    # a flip that still parses to the same header (rare) is harmless: same or error
    header_bit = bit_flip("header-bit", "error-or-same", "header", "byte {:.0%} of the header")

    def header_dtype(rng):
        op, rel = tensor(rng)
        descr = rng.choice([">f4", "<f8", "<f2", "<i4", "|u1", "|b1", "<c8", "|O", "<U4", "V4"])
        swap = rng.random() < 0.5

        def apply(t):
            header, data, fields = npy_parts(t / rel)
            if swap and descr == ">f4":
                data = np.frombuffer(data, "<f4").byteswap().tobytes()  # the same values, stored big-endian
            (t / rel).write_bytes(npy_header(descr, False, fields["shape"]) + data)

        return Mutation("header-dtype", "error", op, f"descr {descr}{' (data byte-swapped)' if swap else ''}", apply)

    def header_shape(rng):
        op, rel = tensor(rng)
        how = rng.choice(["reverse", "flat", "extra-dim", "bigger", "negative", "huge"])

        def apply(t):
            header, data, fields = npy_parts(t / rel)
            shape = tuple(fields["shape"])
            new = {
                "reverse": shape[::-1],
                "flat": (int(np.prod(shape)),),
                "extra-dim": (1, *shape),
                "bigger": (shape[0] + 1, *shape[1:]),
                "negative": (-1, *shape[1:]),
                "huge": (2**62, *shape[1:]),
            }[how]
            (t / rel).write_bytes(npy_header(fields["descr"], False, new) + data)

        # reverse/flat of a shape whose reverse is itself stays the same
        return Mutation("header-shape", "error-or-same", op, how, apply)

    def header_order(rng):
        op, rel = tensor(rng)

        def apply(t):
            header, data, fields = npy_parts(t / rel)
            (t / rel).write_bytes(npy_header(fields["descr"], True, fields["shape"]) + data)

        return Mutation("header-order", "error", op, "fortran_order True", apply)

    def pickled(rng):
        op, rel = tensor(rng)

        def apply(t):
            sentinel = os.environ.get(SENTINEL_ENV, str(outside / "UNPICKLED"))
            array = np.empty(1, object)
            array[0] = _Payload(sentinel)
            with open(t / rel, "wb") as f:
                np.lib.format.write_array(f, array, allow_pickle=True)

        return Mutation("pickled", "error", op, "an object array whose unpickling writes a sentinel file", apply)

    def symlink(rng):
        op, rel = tensor(rng)
        how = rng.choice(["out-copy", "in-other", "self", "dangling", "tensors-dir-out", "manifest-out", "dev-zero"])

        def apply(t):
            f = t / rel
            if how == "out-copy":  # a valid copy of the same tensor, outside: must still not be followed
                copy = outside / f"outside-{os.getpid()}-{f.name}"
                copy.write_bytes(f.read_bytes())
                f.unlink()
                f.symlink_to(copy)
            elif how == "in-other":
                copy = f.with_name(f"copy-{f.name}")
                copy.write_bytes(f.read_bytes())
                f.unlink()
                f.symlink_to(copy.name)
            elif how == "self":
                f.unlink()
                f.symlink_to(f.name)
            elif how == "dangling":
                f.unlink()
                f.symlink_to(outside / "does-not-exist.npy")
            elif how == "tensors-dir-out":
                target = outside / f"tensors-{os.getpid()}-{rng_id}"
                os.replace(t / "tensors", target)
                (t / "tensors").symlink_to(target)
            elif how == "manifest-out":
                target = outside / f"manifest-{os.getpid()}-{rng_id}.json"
                os.replace(t / MANIFEST, target)
                (t / MANIFEST).symlink_to(target)
            elif how == "dev-zero":
                f.unlink()
                f.symlink_to("/dev/zero")

        rng_id = rng.randrange(1 << 30)
        return Mutation("symlink", "error", None if how.startswith(("tensors", "manifest")) else op, how, apply)

    def special_file(rng):
        op, rel = tensor(rng)
        how = rng.choice(["fifo", "directory", "manifest-fifo", "manifest-directory", "tensors-file"])

        def apply(t):
            f = t / rel
            if how == "fifo":
                f.unlink()
                os.mkfifo(f)
            elif how == "directory":
                f.unlink()
                f.mkdir()
            elif how == "manifest-fifo":
                (t / MANIFEST).unlink()
                os.mkfifo(t / MANIFEST)
            elif how == "manifest-directory":
                (t / MANIFEST).unlink()
                (t / MANIFEST).mkdir()
            else:
                shutil.rmtree(t / "tensors")
                (t / "tensors").write_text("not a directory")

        return Mutation("special-file", "error", op if how in ("fifo", "directory") else None, how, apply)

    def values(rng):
        op = rng.choice(ops)
        how = rng.choice(
            ["nan", "+inf", "-inf", "float32-max", "-float32-max", "1e30", "tiny", "zero-all", "negate", "scale-2"]
        )
        index = rng.random()

        def change(x):
            flat = x.reshape(-1)
            i = int(index * (flat.size - 1))
            fixed = {
                "nan": np.nan,
                "+inf": np.inf,
                "-inf": -np.inf,
                "float32-max": np.finfo(np.float32).max,
                "-float32-max": -np.finfo(np.float32).max,
                "1e30": 1e30,
                "tiny": 1e-45,
            }
            if how in fixed:
                if flat[i] == fixed[how] or (flat[i] != 0 and abs(flat[i]) < 1e-30):
                    flat[i] = 1.0  # make sure the value really changes
                flat[i] = fixed[how]
            elif how == "zero-all":
                flat[:] = 0
            elif how == "negate":
                flat[:] = -flat
            else:
                flat[:] = flat * 2
            return x

        return Mutation("values", "finding", op, f"{how} (digest re-written)", lambda t: rewrite_values(t, op, change))

    def reference_values(rng):
        op = rng.choice(ops)
        how = rng.choice(["nan", "+inf", "-inf"])
        index = rng.random()

        def change(x):
            flat = x.reshape(-1)
            flat[int(index * (flat.size - 1))] = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}[how]
            return x

        return Mutation(
            "reference-values",
            "finding",
            op,
            f"{how} in A (digest re-written)",
            lambda t: rewrite_values(t, op, change),
            side="a",
        )

    return {
        "truncate": truncate,
        "extend": extend,
        "body-bit": body_bit,
        "header-bit": header_bit,
        "header-dtype": header_dtype,
        "header-shape": header_shape,
        "header-order": header_order,
        "pickled": pickled,
        "symlink": symlink,
        "special-file": special_file,
        "values": values,
        "reference-values": reference_values,
    }
