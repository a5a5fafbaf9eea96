"""The versioned JSON documents of `--json` (docs/json.md): every one names its schema and version.

    {"schema": "whisperdiff.compare", "schema_version": 2, ...}

A script checks both before it reads a field. A version goes up whenever a field is added, removed,
renamed or changes type; tests/test_json_schema.py fails when the fields change and it did not.
The documents of `show` and `ls` are built here, next to the trace they describe; `compare` and
`check` build theirs in `Comparison.to_json` and `CheckResult.to_json`.
"""

from __future__ import annotations

import math

import numpy as np

# schema -> its current version; the history of each is in docs/json.md
SCHEMAS = {
    "whisperdiff.compare": 2,  # 1: each op's name was "name"; 2: "op" (the version field came with 2)
    "whisperdiff.check": 1,
    "whisperdiff.show": 1,
    "whisperdiff.ls": 1,
    "whisperdiff.bisect": 1,
}


def document(schema: str, body: dict) -> dict:
    """`body` stamped with its schema and current version (first, so a reader sees them first)."""
    return {"schema": schema, "schema_version": SCHEMAS[schema], **body}


def jsonable(v):
    """A value as strict JSON takes it: NaN as null, Inf as the string "inf" / "-inf", numpy as Python."""
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return None if math.isnan(v) else (str(v) if math.isinf(v) else v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def show_document(trace) -> dict:
    """`show --json` of a Trace: its path, its manifest as stored (schema whisperdiff.trace, docs/traces.md)
    and per-op statistics (Trace.summary, which verifies every tensor)."""
    ops = [{k: jsonable(v) for k, v in row.items()} for row in trace.summary().to_dict(orient="records")]
    return document("whisperdiff.show", {"trace": str(trace.path), "manifest": trace.manifest.to_json(), "ops": ops})


def ls_document(listings: list) -> dict:
    """`ls --json` of list_traces' Listings: one entry per trace found (Listing.row)."""
    return document("whisperdiff.ls", {"traces": [item.row() for item in listings]})
