"""Typed per-op results of `compare`: one `OpResult` per op, each with its `OpFailure`s.

    c = wd.compare(a, b)
    r = c.result("ln_post")
    r.status, r.diverged, r.metrics["rel_l2"], [f.metric for f in r.failures], r.layout

`Comparison.table` is a pandas view of these (one row per op, COLUMNS); the JSON of `compare --json`
lists `OpResult.to_json()` per op. OpFailure lives in measure (tolerances produce it; gate reads it)
and is re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from whisperdiff.measure.tolerances import OpFailure
from whisperdiff.store.documents import jsonable

__all__ = ["COLUMNS", "METRICS", "OpFailure", "OpResult"]

# op_metrics' numbers, as table columns (NaN where the op is not in both traces)
METRICS = [
    "cosine",
    "worst_step_cosine",
    "worst_step",
    "rel_l2",
    "l2",
    "max_abs",
    "max_abs_index",
    "mean_a",
    "std_a",
    "mean_b",
    "std_b",
    "mean_diff",
    "std_ratio",
    "snr_db",
    "mismatch_share",
    "nan_a",
    "inf_a",
    "nan_b",
    "inf_b",
]
# the table's columns, in order; also the keys of each op in `compare --json` (schema whisperdiff.compare)
COLUMNS = [
    "op",
    "status",
    "diverged",
    "failures",
    *METRICS,
    "introduced_rel_l2",
    "inherited_rel_l2",
    "a_shape",
    "b_shape",
    "b_name",
    "layout",
]
# what an op shows for a metric it was never measured on
_UNMEASURED = {
    **dict.fromkeys(METRICS, math.nan),
    "max_abs_index": None,
    "nan_a": 0,
    "inf_a": 0,
    "nan_b": 0,
    "inf_b": 0,
}


@dataclass
class OpResult:
    """One op of a comparison: its status, metrics, failures and where its error comes from."""

    op: str
    status: str  # ok, diverged, missing_in_b, missing_in_a, shape_mismatch, not_traced, not_aligned
    failures: list[OpFailure] = field(default_factory=list)  # [] when the op holds (or was not compared)
    metrics: dict = field(default_factory=dict)  # METRICS -> value; empty where the op is not in both traces
    introduced_rel_l2: float = math.nan  # the error the op adds on B's own inputs (replay); NaN: not computed
    inherited_rel_l2: float = math.nan  # the largest error among its inputs; NaN: not known
    a_shape: tuple | None = None
    b_shape: tuple | None = None
    b_name: str | None = None  # B's name for the op (differs after --rename)
    b_layout: str | None = None  # the layout B stored it in, converted to A's before measuring (column "layout")
    layout: str | None = None  # the op's canonical layout ("B,T,C", ...); None when not known

    @property
    def diverged(self) -> bool:
        return bool(self.failures)

    @property
    def failed_metrics(self) -> set[str]:
        return {f.metric for f in self.failures}

    def metric(self, name: str):
        """One metric (METRICS), NaN (or 0 for the NaN/Inf counts) where the op was not measured."""
        return self.metrics.get(name, _UNMEASURED[name])

    @property
    def failures_text(self) -> str:
        """The failures in one line, as the table's `failures` column shows them."""
        return "; ".join(f.text for f in self.failures)

    def row(self) -> dict:
        """The op's row of `Comparison.table`."""
        return {
            "op": self.op,
            "status": self.status,
            "diverged": self.diverged,
            "failures": self.failures_text,
            **{name: self.metric(name) for name in METRICS},
            "introduced_rel_l2": self.introduced_rel_l2,
            "inherited_rel_l2": self.inherited_rel_l2,
            "a_shape": self.a_shape,
            "b_shape": self.b_shape,
            "b_name": self.b_name,
            "layout": self.b_layout,
        }

    def to_json(self) -> dict:
        """The op in `compare --json` (docs/json.md): the table row, NaN as null, Inf as a string."""
        return {key: jsonable(value) for key, value in self.row().items()}
