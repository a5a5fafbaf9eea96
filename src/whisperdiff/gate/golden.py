"""Golden sets: a reference small enough for a git repository, to check new runs against without
keeping full traces (tiny: ~0.6 MB instead of 177 MB).

    golden/
        golden.json    schema, the reference's provenance, per op: shape and full-tensor statistics
        samples.npz    per op: a fixed sample of element indices and the reference's values there

The sample of each op is drawn from a seed made of the op's name, so it is the same for every run.
A candidate is checked on those elements (cosine, rel L2, max |B - A|, element test) and on its
full-tensor std against the reference's, so both a wrong value and a variance mismatch show.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperdiff.analysis.diagnose import untapped
from whisperdiff.errors import WhisperdiffError
from whisperdiff.measure.metrics import op_metrics
from whisperdiff.measure.tolerances import OpFailure, ToleranceSet
from whisperdiff.provenance import sha256_file
from whisperdiff.store.stats import tensor_stats
from whisperdiff.store.trace import Trace, atomic_write, load_trace, open_inside

SCHEMA = "whisperdiff.gate.golden"
SCHEMA_VERSION = 1
DEFAULT_SAMPLES = 2048


def sample_indices(name: str, size: int, n: int) -> np.ndarray:
    """The fixed flat indices sampled from op `name` (the same on every machine and run)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return np.sort(rng.choice(size, size=min(n, size), replace=False)).astype(np.uint32)


@dataclass
class Golden:
    path: Path
    manifest: dict
    samples: dict[str, tuple[np.ndarray, np.ndarray]]  # op -> (indices, reference values)

    @property
    def ops(self) -> list[str]:
        return [op["name"] for op in self.manifest["ops"]]


def save_golden(trace: str | Path | Trace, out: str | Path, samples: int = DEFAULT_SAMPLES) -> Path:
    """Write the golden set of a reference trace to directory `out` (atomically)."""
    t = trace if isinstance(trace, Trace) else load_trace(trace)
    out = Path(out)
    if samples < 16:
        raise WhisperdiffError(f"--samples {samples} is too few to check anything; use 1024 or more")
    if out.exists() and not (out / "golden.json").exists() and any(out.iterdir()):
        raise WhisperdiffError(f"refusing to overwrite {out}: it exists and is not a golden set; choose another -o")
    ops, arrays = [], {}
    for i, name in enumerate(t.ops):
        t.verify(name)  # a golden set made from a damaged trace would guard the damage
        x = np.asarray(t[name])
        idx = sample_indices(name, x.size, samples)
        arrays[f"idx_{i}"], arrays[f"val_{i}"] = idx, x.reshape(-1)[idx].astype(np.float32)
        ops.append({"name": name, "shape": list(x.shape), "dtype": x.dtype.name, **tensor_stats(x)})
    keep = ("impl", "device", "dtype", "taps", "injected", "versions", "model", "input")
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "source_trace": str(t.path),
        "samples_per_op": samples,
        **{k: t.manifest[k] for k in keep if k in t.manifest},
        "ops": ops,
    }
    manifest["model"] = {k: v for k, v in manifest.get("model", {}).items() if k != "tensor_sha256"}
    bad = next(
        (
            op["name"]
            for op in ops
            if op["nan"] or op["inf"] or not all(math.isfinite(op[k]) for k in ("mean", "std", "min", "max"))
        ),
        None,
    )
    if bad is not None:
        raise WhisperdiffError(
            f"{t.path}: op {bad!r} holds NaN/Inf (or no) values; a golden set must come from a clean reference"
        )
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with atomic_write():  # a signal unwinds through the clean-up below
        _write_golden(tmp, out, arrays, manifest)
    return out


def _write_golden(tmp: Path, out: Path, arrays: dict, manifest: dict) -> None:
    try:
        tmp.mkdir(parents=True)
        np.savez_compressed(tmp / "samples.npz", **arrays)
        manifest["samples_sha256"] = sha256_file(tmp / "samples.npz")  # checked on load: bit rot is an error
        (tmp / "golden.json").write_text(json.dumps(manifest, indent=1, default=_plain, allow_nan=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_regular(path: Path, name: str, limit: int = 1 << 30) -> bytes:
    """The bytes of regular file `name` inside `path` (no symlinks, FIFOs or devices)."""
    try:
        fd = open_inside(path, name)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(name) from None
        raise WhisperdiffError(
            f"{path}/{name} is not a regular file inside the golden set ({e.strerror or e})"
        ) from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise WhisperdiffError(f"{path}/{name} is too large for a golden set")
    return data


def load_golden(path: str | Path) -> Golden:
    """A golden set, verified: its JSON against the schema, samples.npz against its sha256 and the JSON."""
    path = Path(path)
    file = path / "golden.json"
    if not path.is_dir():
        raise WhisperdiffError(
            f"{path} is not a golden set (not a directory); make one with `whisperdiff golden save TRACE -o {path}`"
        )
    try:
        raw = _read_regular(path, "golden.json", 64 << 20)
    except FileNotFoundError:
        raise WhisperdiffError(
            f"{path} is not a golden set (no golden.json); make one with `whisperdiff golden save TRACE -o {path}`"
        ) from None

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise WhisperdiffError(
            f"{file} is not valid JSON ({' '.join(str(e).split())[:200]}); re-make it with `whisperdiff golden save`"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise WhisperdiffError(f"{file} is not a whisperdiff golden set")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WhisperdiffError(f"{file} has no valid schema_version; re-make it with `whisperdiff golden save`")
    if version > SCHEMA_VERSION:
        raise WhisperdiffError(
            f"{path} was written by a newer whisperdiff (golden schema {version}); upgrade whisperdiff"
        )
    if (problem := _golden_problem(manifest)) is not None:
        raise WhisperdiffError(f"{file} is damaged: {problem}; re-make it with `whisperdiff golden save`")
    damaged = f"{path}/samples.npz is missing or damaged"
    try:
        data = _read_regular(path, "samples.npz")
    except FileNotFoundError:
        raise WhisperdiffError(f"{damaged} (missing); re-make it with `whisperdiff golden save`") from None
    want = manifest.get("samples_sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise WhisperdiffError(
            f"{damaged} (it does not match its sha256 in golden.json); re-make it with `whisperdiff golden save`"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            samples = {op["name"]: (z[f"idx_{i}"], z[f"val_{i}"]) for i, op in enumerate(manifest["ops"])}
    except Exception as e:  # truncated, not a zip, bad CRC, a missing array, pickled objects: all one clean error
        raise WhisperdiffError(
            f"{damaged} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
            "re-make it with `whisperdiff golden save`"
        ) from None
    for op in manifest["ops"]:
        idx, val = samples[op["name"]]
        size = math.prod(op["shape"])
        if (
            idx.ndim != 1
            or val.shape != idx.shape
            or idx.dtype.kind not in "iu"
            or val.dtype.kind != "f"
            or (idx.size and (int(idx.min()) < 0 or int(idx.max()) >= size))
        ):
            raise WhisperdiffError(f"{damaged}: the samples of op {op['name']!r} do not fit its shape {op['shape']}")
        if not np.isfinite(val).all() and not (op["nan"] or op["inf"]):
            raise WhisperdiffError(f"{damaged}: op {op['name']!r} has NaN/Inf samples its statistics do not count")
    return Golden(path, manifest, samples)


def _golden_problem(m: dict) -> str | None:
    ops = m.get("ops")
    if not isinstance(ops, list) or not ops:
        return "no ops (a golden set holds at least one)"
    names = set()
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("name"), str) or not op["name"]:
            return f"ops[{i}] is not an op entry with a name"
        if op["name"] in names:
            return f"op {op['name']!r} is listed twice"
        names.add(op["name"])
        shape = op.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape)
        ):
            return f"op {op['name']!r} has shape {shape!r:.60}, not a list of sizes"
        for key in ("mean", "std", "nan", "inf"):
            value = op.get(key)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                and key != "mean"
            ):
                return f"op {op['name']!r} has {key} {value!r:.60}, not a finite number"
    for key in ("model", "input"):
        if key in m and not isinstance(m[key], dict):
            return f"{key!r} is not a mapping"
    if "samples_sha256" in m and not isinstance(m["samples_sha256"], str):
        return "samples_sha256 is not a digest"
    return None


def golden_rows(golden: Golden, trace: Trace, tolerances: ToleranceSet) -> list[dict]:
    """One row per golden op, with the metric columns Tolerance.failures reads, plus `failures`."""
    rows = []
    for op in golden.manifest["ops"]:
        name = op["name"]
        row = {"name": name, "status": "ok", "failures": []}
        if name not in trace:
            skipped = untapped(golden.manifest, trace.manifest)
            row["status"] = "not_traced" if skipped else "missing_in_b"
            if not skipped:
                row["failures"] = [OpFailure(name, "missing", float("nan"), "present in B")]
            rows.append(row)
            continue
        b = np.asarray(trace[name])
        if list(b.shape) != op["shape"]:
            row["status"] = "shape_mismatch"
            row["failures"] = [
                OpFailure(name, "shape", float("nan"), f"B is {list(b.shape)}, the golden set {op['shape']}")
            ]
            rows.append(row)
            continue
        idx, ref = golden.samples[name]
        tol = tolerances.for_op(name)
        m = op_metrics(ref, b.reshape(-1)[idx], layout=None, atol=tol.atol, rtol=tol.rtol)
        full = tensor_stats(b)
        row.update({k: m[k] for k in ("cosine", "rel_l2", "max_abs", "mismatch_share")})
        row.update(
            mean_a=op["mean"],
            std_a=op["std"],
            mean_b=full["mean"],
            std_b=full["std"],
            nan_a=max(op["nan"], m["nan_a"]),
            inf_a=max(op["inf"], m["inf_a"]),
            nan_b=full["nan"],
            inf_b=full["inf"],
        )
        row["std_ratio"] = full["std"] / op["std"] if op["std"] else float("nan")
        row["failures"] = tol.failures(row)
        row["status"] = "diverged" if row["failures"] else "ok"
        rows.append(row)
    return rows


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)
