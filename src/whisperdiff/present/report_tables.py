"""The report's tables: every op's row (the ops where it goes wrong pinned first) and both manifests
side by side. Cells are plain dicts; templates/report.html.j2 lays them out. Failed metrics come from
each op's typed failures (analysis.results), never from the table's text.
"""

from __future__ import annotations

import json
import math

from whisperdiff.analysis.compare import Comparison

TOP_INTRODUCERS = 5


def top_introducers(c: Comparison, n: int = TOP_INTRODUCERS) -> list[dict]:
    """The ops that diverge and introduce the most error themselves, largest first."""
    t = c.table
    limit = c.tolerance.max_rel_l2 or 0
    hits = t[t["diverged"] & (t["introduced_rel_l2"] > limit)].nlargest(n, "introduced_rel_l2")
    return [{"op": op, "introduced": float(v)} for op, v in hits["introduced_rel_l2"].items()]


COLUMNS = [
    "#",
    "op",
    "status",
    "cosine",
    "worst step cos (step)",
    "rel L2",
    "introduced",
    "inherited",
    "max |B-A|",
    "std B/A",
    "mean A",
    "mean B",
    "NaN/Inf B",
    "shape",
    "fails",
]


def op_table(c: Comparison) -> dict:
    """The every-op table: all rows in encoder order, and the rows where it goes wrong pinned first."""
    t = c.tolerance
    rows = []
    for i, (result, r) in enumerate(zip(c.ops, c.table.to_dict("records"), strict=True)):
        introduces = r["diverged"] and not (r["introduced_rel_l2"] <= (t.max_rel_l2 or 0))  # NaN (no replay) counts
        cls = (
            "first"
            if r["op"] == c.first_divergence
            else "introduces"
            if introduces and r["status"] == "diverged"
            else r["status"].replace("_", "-")
        )
        failed = result.failed_metrics
        shape = r["a_shape"] if r["a_shape"] is not None and not isnan(r["a_shape"]) else r["b_shape"]
        if r["status"] == "shape_mismatch":
            shape = f"A {r['a_shape']} / B {r['b_shape']}"
        renamed = r["b_name"] if isinstance(r["b_name"], str) and r["b_name"] != r["op"] else None
        cells = [
            {"text": i},
            {"text": r["op"], "code": True, "small": f"B: {renamed}" if renamed else None},
            {"text": r["status"].replace("_", " ")},
            {"text": num(r["cosine"], ".6f"), "bad": "cosine" in failed},
            {
                "text": num(r["worst_step_cosine"], ".5f")
                + (f" ({integer(r['worst_step'])})" if not isnan(r["worst_step"]) else "")
            },
            {"text": num(r["rel_l2"]), "bad": "rel_l2" in failed},
            {"text": num(r["introduced_rel_l2"]), "bad": r["introduced_rel_l2"] > (t.max_rel_l2 or 0)},
            {"text": num(r["inherited_rel_l2"])},
            {"text": num(r["max_abs"]), "bad": "max_abs" in failed},
            {"text": num(r["std_ratio"], ".4f"), "bad": "std_ratio_dev" in failed},
            {"text": num(r["mean_a"], ".3g")},
            {"text": num(r["mean_b"], ".3g")},
            {"text": f"{integer(r['nan_b'])}/{integer(r['inf_b'])}", "bad": "nonfinite" in failed},
            {"text": "x".join(map(str, shape)) if isinstance(shape, (list, tuple)) else shape},
            {"text": result.failures_text, "wrap": True},
        ]
        rows.append({"op": r["op"], "cls": cls, "cells": cells})
    wanted = [c.first_divergence, *(x["op"] for x in top_introducers(c))]
    by_op = {row["op"]: row for row in rows}
    pinned = [by_op[op] for op in dict.fromkeys(wanted) if op in by_op]
    return {"columns": COLUMNS, "rows": rows, "pinned": pinned}


def manifest_rows(c: Comparison) -> list[dict]:
    rows = []
    for label, get in MANIFEST_FIELDS:
        va, vb = get(c.manifest_a, c.a), get(c.manifest_b, c.b)
        if va is None and vb is None:
            continue
        differs = label not in ("trace", "started", "run time s", "encoder s") and va != vb
        rows.append({"label": label, "a": "" if va is None else va, "b": "" if vb is None else vb, "differs": differs})
    return rows


MANIFEST_FIELDS = [
    ("trace", lambda m, p: str(p)),
    ("implementation", lambda m, p: m.get("impl")),
    ("runner", lambda m, p: m.get("runner", {}).get("encoder")),
    ("device", lambda m, p: m.get("device")),
    ("dtype", lambda m, p: m.get("dtype")),
    ("threads", lambda m, p: m.get("runner", {}).get("threads")),
    ("model", lambda m, p: m.get("model", {}).get("id")),
    ("model source", lambda m, p: m.get("model", {}).get("source")),
    ("weights sha256", lambda m, p: m.get("model", {}).get("weights_sha256")),
    ("dims", lambda m, p: json.dumps(m.get("model", {}).get("dims"))),
    ("input", lambda m, p: m.get("input", {}).get("path")),
    ("input sha256", lambda m, p: m.get("input", {}).get("sha256")),
    ("duration s", lambda m, p: m.get("input", {}).get("duration_s")),
    ("window", lambda m, p: f"{m.get('input', {}).get('window')} of {m.get('input', {}).get('n_windows')}"),
    ("frontend", lambda m, p: m.get("input", {}).get("frontend")),
    ("log-mel sha256", lambda m, p: m.get("input", {}).get("mel_sha256")),
    ("taps", lambda m, p: m.get("taps")),
    ("ops", lambda m, p: len(m.get("ops", []))),
    ("injected bugs", lambda m, p: ", ".join(str(f.get("name")) for f in m.get("injected") or []) or "none"),
    ("versions", lambda m, p: ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())),
    ("started", lambda m, p: m.get("run", {}).get("started")),
    ("run time s", lambda m, p: m.get("run", {}).get("total_seconds")),
    ("encoder s", lambda m, p: m.get("run", {}).get("encoder_seconds")),
    ("compile cache hit", lambda m, p: m.get("run", {}).get("compile_cache_hit")),
]


def isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def num(v, fmt: str = ".3g") -> str:
    return "" if v is None or isnan(v) else format(v, fmt)


def integer(v) -> str:
    return "" if v is None or isnan(v) else str(int(v))


def short_manifest(m: dict) -> dict:
    """A manifest without its long per-tensor lists (they are in the trace)."""
    out = {k: v for k, v in m.items() if k != "ops"}
    if "tensor_sha256" in out.get("model", {}):
        out["model"] = {**out["model"], "tensor_sha256": f"({len(out['model']['tensor_sha256'])} tensors)"}
    out["ops"] = f"({len(m.get('ops', []))} ops)"
    return out
