"""Damaged and hostile traces, made on purpose: the mutations the trust tests (tests/test_fuzz.py) and
the fuzz campaign (benchmarks/fuzz.py) feed to every reader, each with what a reader must do with it.

    for m in mutations(Path("traces/b"), random.Random(0), 300):
        copy = fresh_copy_of_b()
        m.apply(copy)           # then: check(a, copy) must be a clean error, or the expected verdict

expect:
    "error"    damage (bytes, headers, files, manifest): a one-line error naming the trace, never a verdict
    "finding"  B's values at `op` were changed and its digest re-written: check must fail at `op`
    "same"     harmless (an unknown key, a hostile but valid string): the unmutated verdict, or a clean error
"""

from __future__ import annotations

import ast
import json
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperdiff.store.trace import MANIFEST

HOSTILE = {
    "ansi": "\x1b[2J\x1b[H\x1b[32mPASS: every op within tolerances\x1b[0m",
    "markup": "[/] [bold red]x[/bold red] [link=http://x]y[/link] [",
    "emoji": "my:thumbs_up:trace :smiley:",
    "c1": "csi\x9b31mred\x07bell\x08\r",
    "bidi": "evil\u202etxt.exe\u2066",
    "long": "x" * 100_000,
}
BAD_STRINGS = {"nul": "a\x00b", "surrogate": "a\udc80b"}
SENTINEL_ENV = "WHISPERDIFF_FUZZ_SENTINEL"  # a pickled payload writes this file if anything unpickles it


@dataclass
class Mutation:
    kind: str
    expect: str  # "error", "finding" or "same" (see the module docstring)
    op: str | None
    detail: str
    apply: Callable[[Path], None]
    side: str = "b"  # which trace of the pair it damages: "b" (the candidate) or "a" (the reference)

    def __str__(self) -> str:
        return f"{self.kind}({self.side}: {self.op or 'manifest'}: {self.detail})"


class _Payload:
    """Unpickling this calls open() on the sentinel path: proof that something ran pickled code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _manifest(trace: Path) -> dict:
    return json.loads((trace / MANIFEST).read_text())


def _write_manifest(trace: Path, m: dict) -> None:
    (trace / MANIFEST).write_text(json.dumps(m, indent=1))


def _npy_parts(file: Path) -> tuple[bytes, bytes, dict]:
    """(header bytes, data bytes, header dict) of a v1 .npy written by the trace writer."""
    raw = file.read_bytes()
    n = struct.unpack("<H", raw[8:10])[0]
    header = raw[: 10 + n]
    fields = ast.literal_eval(header[10:].decode("latin1"))
    return header, raw[10 + n :], fields


def _header(descr: str, fortran: bool, shape: tuple) -> bytes:
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {tuple(shape)!r}, }}"
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _rewrite(trace: Path, op: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """Change op's values and re-write its file and digest consistently: only the numbers are wrong."""
    from whisperdiff.provenance import sha256_bytes

    m = _manifest(trace)
    entry = next(o for o in m["ops"] if o["name"] == op)
    file = trace / entry["file"]
    value = np.ascontiguousarray(fn(np.load(file).copy()))
    with open(file, "wb") as f:
        np.lib.format.write_array(f, value, allow_pickle=False)
        entry["file_bytes"] = f.tell()
    entry["sha256"] = sha256_bytes(value)
    _write_manifest(trace, m)


def _set_path(m: dict, path: tuple, value) -> None:
    node = m
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value


def mutations(trace: Path, rng: random.Random, n: int, outside: Path | None = None) -> list[Mutation]:
    """`n` mutations of trace `trace` (not applied), drawn with `rng` from every kind below.
    outside: a directory outside the trace for symlink targets (default: the trace's parent)."""
    m = _manifest(trace)
    ops = [o["name"] for o in m["ops"]]
    files = {o["name"]: trace / o["file"] for o in m["ops"]}
    outside = outside or trace.parent
    makers = _makers(ops, files, outside)
    kinds = sorted(makers)
    return [makers[kinds[i % len(kinds)]](rng) for i in range(n)]


def _makers(ops: list[str], files: dict[str, Path], outside: Path) -> dict[str, Callable[[random.Random], Mutation]]:
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

    def body_bit(rng):
        op, rel = tensor(rng)
        where, bit = rng.random(), rng.randrange(8)

        def apply(t):
            header, data, _ = _npy_parts(t / rel)
            data = bytearray(data)
            data[int(where * (len(data) - 1))] ^= 1 << bit
            (t / rel).write_bytes(header + bytes(data))

        return Mutation("body-bit", "error", op, f"bit {bit} at {where:.0%} of the data", apply)

    def header_bit(rng):
        op, rel = tensor(rng)
        where, bit = rng.random(), rng.randrange(8)

        def apply(t):
            header, data, _ = _npy_parts(t / rel)
            header = bytearray(header)
            header[int(where * (len(header) - 1))] ^= 1 << bit
            (t / rel).write_bytes(bytes(header) + data)

        # a flip that still parses to the same header (rare) is harmless: same or error
        return Mutation("header-bit", "error-or-same", op, f"bit {bit} at byte {where:.0%} of the header", apply)

    def header_dtype(rng):
        op, rel = tensor(rng)
        descr = rng.choice([">f4", "<f8", "<f2", "<i4", "|u1", "|b1", "<c8", "|O", "<U4", "V4"])
        swap = rng.random() < 0.5

        def apply(t):
            header, data, fields = _npy_parts(t / rel)
            if swap and descr == ">f4":
                data = np.frombuffer(data, "<f4").byteswap().tobytes()  # the same values, stored big-endian
            (t / rel).write_bytes(_header(descr, False, fields["shape"]) + data)

        return Mutation("header-dtype", "error", op, f"descr {descr}{' (data byte-swapped)' if swap else ''}", apply)

    def header_shape(rng):
        op, rel = tensor(rng)
        how = rng.choice(["reverse", "flat", "extra-dim", "bigger", "negative", "huge"])

        def apply(t):
            header, data, fields = _npy_parts(t / rel)
            shape = tuple(fields["shape"])
            new = {
                "reverse": shape[::-1],
                "flat": (int(np.prod(shape)),),
                "extra-dim": (1, *shape),
                "bigger": (shape[0] + 1, *shape[1:]),
                "negative": (-1, *shape[1:]),
                "huge": (2**62, *shape[1:]),
            }[how]
            (t / rel).write_bytes(_header(fields["descr"], False, new) + data)

        # reverse/flat of a shape whose reverse is itself stays the same
        return Mutation("header-shape", "error-or-same", op, how, apply)

    def header_order(rng):
        op, rel = tensor(rng)

        def apply(t):
            header, data, fields = _npy_parts(t / rel)
            (t / rel).write_bytes(_header(fields["descr"], True, fields["shape"]) + data)

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
                import shutil

                shutil.rmtree(t / "tensors")
                (t / "tensors").write_text("not a directory")

        return Mutation("special-file", "error", op if how in ("fifo", "directory") else None, how, apply)

    def manifest_type(rng):
        op = rng.choice(ops)
        where = rng.choice(
            [
                "op.shape",
                "op.file",
                "op.dtype",
                "op.name",
                "op.nbytes",
                "op.sha256",
                "op.file_bytes",
                "impl",
                "model",
                "input",
                "runner",
                "run",
                "ops",
                "schema_version",
                "taps",
                "injected",
                "model.id",
                "model.source",
                "model.dims",
                "input.path",
                "input.window",
                "model.dims.n_mels",
                "transcript",
            ]
        )
        value = rng.choice(
            [
                None,
                7,
                -1,
                2**70,
                1.5,
                True,
                "x",
                [],
                [1, "a"],
                {},
                {"a": 1},
                "../../etc/passwd",
                "tensors/" + "a" * 5000 + ".npy",
            ]
        )

        def apply(t):
            m = _manifest(t)
            if where.startswith("op."):
                entry = next(o for o in m["ops"] if o["name"] == op)
                entry[where[3:]] = value
            else:
                _set_path(m, tuple(where.split(".")), value)
            _write_manifest(t, m)

        return Mutation(
            "manifest-type", "error-or-same", op if where.startswith("op.") else None, f"{where} = {value!r:.40}", apply
        )

    def manifest_key(rng):
        op = rng.choice(ops)
        how = rng.choice(
            [
                "drop-op-key",
                "drop-required",
                "drop-optional",
                "unknown-key",
                "duplicate-op",
                "empty-ops",
                "schema",
                "schema-version",
                "nan-constant",
                "not-json",
                "deep",
                "bad-utf8",
                "big-int",
            ]
        )
        key = rng.choice(["name", "file", "shape", "dtype", "nbytes", "sha256"])
        required = rng.choice(["ops", "impl", "schema", "schema_version"])
        optional = rng.choice(["runner", "versions", "run", "device"])
        version = rng.choice([0, 2, 99, "1", 1.0, True, None, -1])
        expect = "same" if how in ("drop-optional", "unknown-key") else "error"

        def apply(t):
            m = _manifest(t)
            entry = next(o for o in m["ops"] if o["name"] == op)
            if how == "drop-op-key":
                del entry[key]
            elif how == "drop-required":
                del m[required]
            elif how == "drop-optional":
                m.pop(optional, None)
            elif how == "unknown-key":
                m["from_the_future"] = {"x": [1, 2]}
                entry["extra"] = "yes"
            elif how == "duplicate-op":
                m["ops"].append(dict(entry))
            elif how == "empty-ops":
                m["ops"] = []
            elif how == "schema":
                m["schema"] = "whisperdiff.other"
            elif how == "schema-version":
                m["schema_version"] = version
            if how == "nan-constant":
                text = json.dumps(m).replace('"nbytes": ', '"nbytes": NaN, "x": ', 1)
            elif how == "not-json":
                text = json.dumps(m)[:-3]
            elif how == "deep":
                text = json.dumps(m)[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}"
            elif how == "bad-utf8":
                (t / MANIFEST).write_bytes(json.dumps(m).encode()[:-1] + b'\xff\xfe"}')
                return
            elif how == "big-int":
                text = json.dumps(m).replace('"nbytes": ', '"nbytes": 1' + "0" * 5000 + ', "y": ', 1)
            else:
                text = json.dumps(m)
            (t / MANIFEST).write_text(text)

        detail = {
            "drop-op-key": key,
            "drop-required": required,
            "drop-optional": optional,
            "schema-version": repr(version),
        }.get(how, "")
        return Mutation("manifest-key", expect, op, f"{how} {detail}".strip(), apply)

    def hostile_string(rng):
        name = rng.choice(sorted(HOSTILE) + sorted(BAD_STRINGS))
        text = HOSTILE.get(name) or BAD_STRINGS[name]
        where = rng.choice(
            [
                ("impl",),
                ("model", "id"),
                ("model", "source"),
                ("input", "path"),
                ("runner", "encoder"),
                ("transcript", "text"),
                ("run", "started"),
                ("injected",),
            ]
        )
        expect = "same" if name in HOSTILE else "error"

        def apply(t):
            m = _manifest(t)
            if where == ("injected",):
                m["injected"] = [{"name": text, "first_op": text, "description": text}]
            else:
                _set_path(m, where, text)
            _write_manifest(t, m)

        if where == ("injected",) and expect == "same":
            expect = "error-or-same"  # an unknown fault name may make the traces not comparable: an error
        return Mutation("hostile-string", expect, None, f"{'.'.join(where)} = {name}", apply)

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

        return Mutation("values", "finding", op, f"{how} (digest re-written)", lambda t: _rewrite(t, op, change))

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
            lambda t: _rewrite(t, op, change),
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
        "manifest-type": manifest_type,
        "manifest-key": manifest_key,
        "hostile-string": hostile_string,
        "values": values,
        "reference-values": reference_values,
    }


OUTCOMES = ("clean error", "correct finding", "silent-wrong", "misreport", "internal error", "hang")
_WORST = {
    o: i
    for i, o in enumerate(("correct finding", "clean error", "misreport", "silent-wrong", "internal error", "hang"))
}
# kinds whose damage the cheap checks of `ls` must see (a flipped data bit or a re-written value needs a read)
_LS_SEES = ("truncate", "extend", "header-dtype", "header-order", "pickled", "symlink", "special-file")


def judge(m: Mutation, a: Path, b: Path, baseline: list[str]) -> tuple[str, str]:
    """Run the readers on the mutated pair (ls, show, check) and return (outcome, why).

    baseline: the ops check fails on the unmutated pair. Outcomes: OUTCOMES (all but "hang", which
    only a caller with a timeout can see)."""
    from whisperdiff.errors import WhisperdiffError
    from whisperdiff.gate.check import check
    from whisperdiff.store.trace import list_traces, load_trace

    damaged = a if m.side == "a" else b
    verdicts = []
    try:  # ls: never raises for one bad entry; never "complete" for damage it can see
        listing = {item.path.name: item.status for item in list_traces(damaged.parent)}
        status = listing.get(damaged.name, "complete")
        if m.expect == "error" and m.kind in _LS_SEES and status == "complete":
            verdicts.append(("misreport", f"ls lists it as complete ({m})"))
    except WhisperdiffError as e:
        verdicts.append(("internal error", f"ls of the folder failed: {e}"))
    except Exception as e:
        verdicts.append(("internal error", f"ls: {type(e).__name__}: {e}"))
    for reader in ("show", "check"):
        try:
            if reader == "show":
                load_trace(damaged).summary()
                result = None
            else:
                result = check(a, b, replay=False)
        except WhisperdiffError as e:
            text = str(e)
            if "\n" in text:
                verdicts.append(("misreport", f"{reader}: the error is not one line"))
            else:
                verdicts.append(("clean error", f"{reader}: {text[:160]}"))
            continue
        except RecursionError as e:
            verdicts.append(("internal error", f"{reader}: RecursionError {e}"))
            continue
        except Exception as e:
            verdicts.append(("internal error", f"{reader}: {type(e).__name__}: {str(e)[:160]}"))
            continue
        if m.expect == "error":
            verdicts.append(("silent-wrong", f"{reader} accepted a damaged trace ({m})"))
        elif reader == "show":
            verdicts.append(("correct finding", "show read it"))
        elif m.expect == "finding":
            if m.op in result.failed_ops:
                verdicts.append(("correct finding", f"check fails at {m.op}"))
            elif result.passed:
                verdicts.append(("silent-wrong", f"check passed although {m.op} was changed ({m})"))
            else:
                verdicts.append(("misreport", f"check failed at {result.failed_ops[:3]}, not at {m.op} ({m})"))
        elif result.failed_ops == baseline:
            verdicts.append(("correct finding", "same verdict as the unmutated pair"))
        elif result.passed:
            verdicts.append(("silent-wrong", f"check passed; unmutated it fails at {baseline[:3]} ({m})"))
        else:
            verdicts.append(("misreport", f"check fails at {result.failed_ops[:3]}; unmutated at {baseline[:3]} ({m})"))
    return max(verdicts, key=lambda v: _WORST[v[0]])
