"""Whether two traces can be compared op by op, and if not, why: one function over the two manifests.

    c = comparability(ta.manifest, tb.manifest)
    if not c:                       # truthy when comparable
        print(c.summary)            # "different weights (sha256 1a2b3c4d5e6f vs 0f9e8d7c6b5a); ..."
        [r.kind for r in c.reasons] # ["weights", ...]

Traces made with other model dims, other weights or another input (or a decoder trace against an
encoder one) measure different computations: their differences say nothing about a port, so compare
and check stop on them (unless forced) with these reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

KINDS = {
    "dims": "the two models have other dimensions",
    "weights": "the two runs used other weights",
    "input": "the two runs were fed other inputs",
    "part": "A is a decoder trace and B is not",
}
PREFIX = "NOT COMPARABLE: "  # how a reason reads among a Comparison's warnings


@dataclass(frozen=True)
class Reason:
    kind: str  # one of KINDS
    message: str  # "different weights (sha256 1a2b3c4d5e6f vs 0f9e8d7c6b5a)"

    @property
    def warning(self) -> str:
        return PREFIX + self.message


@dataclass(frozen=True)
class Comparability:
    reasons: tuple[Reason, ...] = ()

    @property
    def comparable(self) -> bool:
        return not self.reasons

    def __bool__(self) -> bool:
        return self.comparable

    @property
    def summary(self) -> str:
        """The reasons as one clause: "different weights (...); different inputs (...)"."""
        return "; ".join(r.message for r in self.reasons)

    @property
    def warnings(self) -> list[str]:
        return [r.warning for r in self.reasons]

    def reason(self, kind: str) -> Reason | None:
        return next((r for r in self.reasons if r.kind == kind), None)


def comparability(ma: Mapping, mb: Mapping) -> Comparability:
    """Whether traces with manifests `ma` (the reference) and `mb` are comparable. Manifests are read
    as their JSON form, so a golden set's manifest serves as well as a trace's."""
    reasons = []
    da, db = ma.get("model", {}).get("dims"), mb.get("model", {}).get("dims")
    if da and db and da != db:
        diff = ", ".join(f"{k} {da.get(k)} vs {db.get(k)}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k))
        reasons.append(Reason("dims", f"different model dims ({diff})"))
    wa, wb = ma.get("model", {}).get("weights_sha256"), mb.get("model", {}).get("weights_sha256")
    if wa and wb and wa != wb:
        reasons.append(Reason("weights", f"different weights (sha256 {wa[:12]} vs {wb[:12]})"))
    ia, ib = ma.get("input", {}), mb.get("input", {})
    if ia.get("sha256") and ib.get("sha256") and ia["sha256"] != ib["sha256"]:
        reasons.append(Reason("input", f"different inputs ({ia.get('path')} vs {ib.get('path')})"))
    if ma.get("part") == "decoder" and mb.get("part") != "decoder":
        reasons.append(Reason("part", "A is a decoder trace, B is not (make B with `whisperdiff trace-decoder`)"))
    return Comparability(tuple(reasons))
