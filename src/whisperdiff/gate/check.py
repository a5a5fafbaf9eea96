"""`check`: pass or fail a candidate trace against a reference (a trace or a golden set) on per-op
tolerances, for CI. Pure verdicts over `compare`'s typed per-op results; JUnit XML for CI.

    r = check("traces/torch-tiny.en-speech", "traces/max-tiny.en-speech", load_tolerances("float32"))
    r.passed, r.first_failure, r.failures        # [OpFailure(op, metric, value, limit), ...] in encoder order
    Path("check.xml").write_text(junit_xml(r))
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from whisperdiff.analysis.compare import compare
from whisperdiff.analysis.diagnose import Finding, manifest_findings
from whisperdiff.errors import WhisperdiffError
from whisperdiff.measure.tolerances import OpFailure, ToleranceSet
from whisperdiff.store.documents import document
from whisperdiff.store.trace import Trace, load_trace


@dataclass
class CheckResult:
    reference: Path  # a trace or a golden set
    candidate: Path
    ops: list[
        dict
    ]  # per op: name, status (ok, diverged, missing_in_b, shape_mismatch, not_traced, not_aligned), failures
    # (a list of OpFailure)
    tolerances: ToleranceSet
    warnings: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # what compare thinks is wrong (empty for golden)

    @property
    def failures(self) -> list[OpFailure]:
        return [f for r in self.ops for f in r["failures"]]

    @property
    def failed_ops(self) -> list[str]:
        return [r["name"] for r in self.ops if r["failures"]]

    @property
    def first_failure(self) -> str | None:
        return next(iter(self.failed_ops), None)

    @property
    def checked(self) -> int:
        return sum(r["status"] not in ("not_traced", "not_aligned") for r in self.ops)

    @property
    def passed(self) -> bool:
        return not self.failed_ops

    def __repr__(self) -> str:
        return f"CheckResult({self.summary()!r}, reference={str(self.reference)!r}, candidate={str(self.candidate)!r})"

    def to_json(self) -> dict:
        """The document of `check --json`: schema whisperdiff.check (docs/json.md)."""
        return document(
            "whisperdiff.check",
            {
                "passed": self.passed,
                "first_failure": self.first_failure,
                "summary": self.summary(),
                "failures": [f.to_json() for f in self.failures],
                "warnings": self.warnings,
            },
        )

    def summary(self) -> str:
        if self.passed:
            return f"PASS: {self.checked} ops within tolerances ({self.tolerances.source})"
        return (
            f"FAIL: {len(self.failed_ops)} of {self.checked} ops out of tolerance ({self.tolerances.source}); "
            f"first failure: {self.first_failure}"
        )


def check(
    a: str | Path | Trace,
    b: str | Path | Trace,
    tolerances: ToleranceSet | None = None,
    *,
    rename=None,
    model=None,
    replay: bool = True,
    force: bool = False,
) -> CheckResult:
    """Check candidate `b` against reference trace `a`. Traces that are not comparable (other
    weights, input or dims) are an error, not a failure: fix the set-up, not the port (force=True
    checks them anyway)."""
    tolerances = tolerances or ToleranceSet()
    c = compare(a, b, tolerance=tolerances, rename=rename, model=model, replay=replay)
    if not c.comparable and not force:
        raise WhisperdiffError(
            f"cannot check: the traces are not comparable ({c.comparability.summary}); trace both with the same model and input (--force checks them anyway)"
        )
    ops = [{"name": r.op, "status": r.status, "failures": r.failures} for r in c.ops if r.status != "missing_in_a"]
    return CheckResult(c.a, c.b, ops, tolerances, c.warnings, [f for f in c.findings if f.severity == "error"])


def check_golden(golden: str | Path, b: str | Path | Trace, tolerances: ToleranceSet | None = None) -> CheckResult:
    """Check candidate `b` against a golden set (golden.py)."""
    from whisperdiff.gate.golden import golden_rows, load_golden

    g = load_golden(golden)
    tb = b if isinstance(b, Trace) else load_trace(b)
    tolerances = tolerances or ToleranceSet()
    _, warnings, comparability = manifest_findings(g.manifest, tb.manifest)
    if not comparability:
        raise WhisperdiffError(
            f"cannot check: {tb.path} is not comparable with the golden set {g.path} ({comparability.summary})"
        )
    rows = golden_rows(g, tb, tolerances)
    not_traced = [r["name"] for r in rows if r["status"] == "not_traced"]
    if not_traced:
        warnings.append(
            f"{len(not_traced)} ops of the golden set were not traced in B (taps={tb.manifest.get('taps')!r})"
        )
    extra = [name for name in tb.ops if name not in g.samples]
    if extra:
        warnings.append(f"{len(extra)} ops of B are not in the golden set and were not checked: {', '.join(extra[:4])}")
    return CheckResult(g.path, tb.path, rows, tolerances, warnings)


def junit_xml(result: CheckResult) -> str:
    """JUnit XML: one test case per op, a <failure> per op out of tolerance, <skipped> when not traced."""
    suite = ET.Element(
        "testsuite",
        name="whisperdiff.gate.check",
        tests=str(len(result.ops)),
        failures=str(len(result.failed_ops)),
        errors="0",
        skipped=str(sum(r["status"] in ("not_traced", "not_aligned") for r in result.ops)),
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("reference", result.reference),
        ("candidate", result.candidate),
        ("tolerances", result.tolerances.source),
    ):
        ET.SubElement(props, "property", name=key, value=str(value))
    classname = f"whisperdiff.{result.candidate.name}"
    for r in result.ops:
        case = ET.SubElement(suite, "testcase", classname=classname, name=r["name"], time="0")
        if r["status"] in ("not_traced", "not_aligned"):
            what = "not traced in" if r["status"] == "not_traced" else "no value aligned to it in the capture of"
            ET.SubElement(case, "skipped", message=f"{what} the candidate")
        elif r["failures"]:
            failures = r["failures"]
            failure = ET.SubElement(case, "failure", type=failures[0].metric, message=str(failures[0]))
            failure.text = "\n".join(str(f) for f in failures)
    root = ET.Element("testsuites", name="whisperdiff", tests=suite.get("tests"), failures=suite.get("failures"))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
