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

import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperdiff.analysis.diagnose import untapped
from whisperdiff.analysis.metrics import op_metrics
from whisperdiff.errors import WhisperdiffError
from whisperdiff.gate.tolerances import ToleranceSet
from whisperdiff.store.stats import tensor_stats
from whisperdiff.store.trace import Trace, load_trace

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
    manifest = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "source_trace": str(t.path),
                "samples_per_op": samples, **{k: t.manifest[k] for k in keep if k in t.manifest}, "ops": ops}  # fmt: skip
    manifest["model"] = {k: v for k, v in manifest.get("model", {}).items() if k != "tensor_sha256"}
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        np.savez_compressed(tmp / "samples.npz", **arrays)
        (tmp / "golden.json").write_text(json.dumps(manifest, indent=1, default=_plain))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_golden(path: str | Path) -> Golden:
    path = Path(path)
    file = path / "golden.json"
    if not file.is_file():
        raise WhisperdiffError(f"{path} is not a golden set (no golden.json); make one with `whisperdiff golden save TRACE -o {path}`")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WhisperdiffError(f"{file} is not valid JSON ({e}); re-make it with `whisperdiff golden save`") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise WhisperdiffError(f"{file} is not a whisperdiff golden set")
    if not isinstance(manifest.get("schema_version"), int) or manifest["schema_version"] > SCHEMA_VERSION:
        raise WhisperdiffError(f"{path} was written by a newer whisperdiff (golden schema {manifest.get('schema_version')}); "
                               "upgrade whisperdiff")  # fmt: skip
    try:
        with np.load(path / "samples.npz", allow_pickle=False) as z:
            samples = {op["name"]: (z[f"idx_{i}"], z[f"val_{i}"]) for i, op in enumerate(manifest["ops"])}
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise WhisperdiffError(f"{path}/samples.npz is missing or damaged ({e}); re-make it with `whisperdiff golden save`") from None
    return Golden(path, manifest, samples)


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
                row["failures"] = [("missing", float("nan"), "present in B")]
            rows.append(row)
            continue
        b = np.asarray(trace[name])
        if list(b.shape) != op["shape"]:
            row["status"] = "shape_mismatch"
            row["failures"] = [("shape", float("nan"), f"B is {list(b.shape)}, the golden set {op['shape']}")]
            rows.append(row)
            continue
        idx, ref = golden.samples[name]
        tol = tolerances.for_op(name)
        m = op_metrics(ref, b.reshape(-1)[idx], layout=None, atol=tol.atol, rtol=tol.rtol)
        full = tensor_stats(b)
        row.update({k: m[k] for k in ("cosine", "rel_l2", "max_abs", "mismatch_share")})
        row.update(mean_a=op["mean"], std_a=op["std"], mean_b=full["mean"], std_b=full["std"],
                   nan_a=op["nan"], inf_a=op["inf"], nan_b=full["nan"], inf_b=full["inf"])  # fmt: skip
        row["std_ratio"] = full["std"] / op["std"] if op["std"] else float("nan")
        row["failures"] = tol.failures(row)
        row["status"] = "diverged" if row["failures"] else "ok"
        rows.append(row)
    return rows


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)
