"""A sweep's records: one JSON line per finished job in OUT/records.jsonl, appended as jobs finish.

Appending a line (flushed and synced) is the only write, so a sweep killed at any point keeps every
record it had, and a rerun skips the jobs already recorded (resumable). A torn last line from a crash
is skipped when read. Where one job has several records (an error retried with --retry-errors), the
last one counts. `by_property` says which clip property separates diverging jobs from passing ones.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from whisperdiff.inputs.corpus import PROPERTIES

RECORDS = "records.jsonl"
# What a measured job records beyond its clip and config (experiments/sweep.py); a failed job has none of
# them, so a table of failed jobs only still gets these columns (empty) and readers need no special case.
MEASURED = (
    "first_divergence",
    "worst_op",
    "worst_rel_l2",
    "failed_ops",
    "finding",
    "finding_op",
    "findings",
    "ops",
    "transcript_a",
    "transcript_b",
    "wer",
    "golden",
    "tolerances",
    "trace_a",
    "trace_b",
    "seconds_a",
    "seconds_b",
    "seconds_compare",
)


def job_id(clip: str, window: int, config_key: str) -> str:
    return f"{clip}#w{window}@{config_key}"


class SweepTable:
    def __init__(self, out: str | Path):
        self.path = Path(out) / RECORDS
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = json.dumps(record, default=str, allow_nan=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict]:
        """Every readable record, in the order written (a torn or foreign line is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("job_id"), str):
                out.append(record)
        return out

    def latest(self) -> dict[str, dict]:
        return {r["job_id"]: r for r in self.records()}

    def done(self, retry_errors: bool = False) -> set[str]:
        return {k for k, r in self.latest().items() if not (retry_errors and r.get("status") == "error")}

    def frame(self):
        """The latest record of each job as a pandas DataFrame (nested fields stay dicts/lists)."""
        import pandas as pd

        frame = pd.DataFrame(list(self.latest().values()))
        missing = [c for c in MEASURED if c not in frame]
        return frame.reindex(columns=[*frame.columns, *missing]) if missing else frame


def load_records(out: str | Path):
    """A finished (or running) sweep's records, as `SweepTable.frame`."""
    from whisperdiff.errors import WhisperdiffError

    table = SweepTable(out)
    if not table.path.is_file():
        raise WhisperdiffError(f"{out} has no {RECORDS}; run `whisperdiff sweep ... -o {out}` first")
    return table.frame()


def by_property(frame, diverged=None) -> list[dict]:
    """For each clip property, the one threshold that best separates diverging jobs from passing ones:
    [{property, direction ('>' or '<'), threshold, accuracy (balanced), gap, diverged, passed}], best first
    (ties: the widest gap between the two groups, relative to the property's range).
    A property that separates them perfectly is what the divergence depends on."""
    import numpy as np

    rows = frame[frame["status"] != "error"] if "status" in frame else frame
    if diverged is None:
        diverged = rows["status"] == "diverged"
    out = []
    for prop in PROPERTIES:
        if prop not in rows or diverged.all() or not diverged.any():
            continue
        values = rows[prop].astype(float).to_numpy()
        d = diverged.to_numpy()
        ok = ~np.isnan(values)
        values, d = values[ok], d[ok]
        if not d.any() or d.all():
            continue
        best = None
        points = np.unique(values)
        spread = max(float(points[-1] - points[0]), 1e-12)
        for lo, hi in zip(points[:-1], points[1:], strict=True):
            cut = (lo + hi) / 2
            for direction in (">", "<"):
                pred = values > cut if direction == ">" else values < cut
                accuracy = 0.5 * (pred[d].mean() + (~pred[~d]).mean())
                # Equal accuracy: the cut in the widest gap (relative to the property's range) wins.
                score = (round(float(accuracy), 9), float(hi - lo) / spread)
                if best is None or score > best[0]:
                    best = (score, direction, cut)
        if best is not None:
            out.append(
                {
                    "property": prop,
                    "direction": best[1],
                    "threshold": float(best[2]),
                    "accuracy": round(best[0][0], 3),
                    "gap": round(best[0][1], 4),
                    "diverged": int(d.sum()),
                    "passed": int((~d).sum()),
                    "unit": PROPERTIES[prop],
                }
            )
    return sorted(out, key=lambda r: (-r["accuracy"], -r["gap"]))
