"""For your own tests: assert that two traces agree op by op, with a message that lists the failing ops.

from whisperdiff.gate.testing import assert_traces_close

def test_my_port_matches_whisper():
    assert_traces_close("traces/torch-tiny.en-speech", "traces/my-port", "float32")
"""

from __future__ import annotations

from pathlib import Path

from whisperdiff.gate.check import check, check_golden
from whisperdiff.measure.tolerances import ToleranceSet, load_tolerances
from whisperdiff.store.trace import Trace


def assert_traces_close(
    a: str | Path | Trace,
    b: str | Path | Trace,
    tolerances: str | Path | ToleranceSet | None = None,
    *,
    golden: bool = False,
    replay: bool = False,
) -> None:
    """Raise AssertionError naming every op of `b` out of tolerance against `a` (a trace, or a golden
    set with golden=True). tolerances: a ToleranceSet, a TOML path, a shipped name, or None (float32)."""
    __tracebackhide__ = True  # pytest shows the failure at the caller's assert, not in here
    tol = tolerances if isinstance(tolerances, ToleranceSet) else load_tolerances(tolerances)
    result = check_golden(a, b, tol) if golden else check(a, b, tol, replay=replay)
    if result.passed:
        return
    lines = [result.summary(), *(f"  {f}" for f in result.failures[:20])]
    if len(result.failures) > 20:
        lines.append(f"  ... and {len(result.failures) - 20} more")
    lines += [f"  likely cause: {f.kind} at {f.op}: {f.message}" for f in result.findings[:1]]
    raise AssertionError("\n".join(lines))
