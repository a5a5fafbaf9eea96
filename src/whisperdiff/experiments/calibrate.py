"""Calibration: propose a tolerance file from a measured noise floor.

Two runs that should agree (a float32 trace and openai-whisper re-run in float64 on the same model and
input, or the same implementation on another device, dtype or build) differ only by rounding. Their
spread per op kind, times a safety factor, is a tolerance that a correct port passes and a real bug
fails. Without `against`, the reference is re-run in float64, hence an experiment.

    from whisperdiff.experiments.calibrate import calibrate

    cal = calibrate("traces/torch-tiny.en-speech", factor=10)   # re-runs it in float64
    cal.tolerances.for_op("blocks.0.mlp.fc1").max_rel_l2      # the proposed limit
    Path("float32-mine.toml").write_text(cal.to_toml())        # `whisperdiff check A B -t float32-mine.toml`
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from whisperdiff.analysis.compare import compare
from whisperdiff.capture.session import float64_twin
from whisperdiff.errors import WhisperdiffError
from whisperdiff.measure.tolerances import ToleranceSet, propose
from whisperdiff.store.trace import Trace, load_trace


@dataclass(frozen=True)
class Calibration:
    """Proposed tolerances and what they were measured from."""

    reference: Path
    against: str  # the other run, in words: a trace path, or the float64 re-run
    factor: float
    tolerances: ToleranceSet

    def to_toml(self, when: str | None = None) -> str:
        """The tolerance file, its header saying how it was made (dated `when`, default today)."""
        when = when or datetime.now(UTC).strftime("%Y-%m-%d")
        return self.tolerances.to_toml(
            f"whisperdiff tolerances, proposed {when}: the spread of {self.reference}\nagainst {self.against},"
            f" times {self.factor:g}, per op kind (blocks.* folded).\n"
            f"Use: whisperdiff check A B --tolerances THIS_FILE"
        )


def calibrate(
    reference: str | Path | Trace,
    *,
    against: str | Path | Trace | None = None,
    factor: float = 10.0,
    on_op: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Calibration:
    """Tolerances from the spread between `reference` (a clean trace) and `against`, times `factor`.

    against: another run of the same model and input; default: openai-whisper re-run in float64 on the
    reference's own recorded input (progress: on_total(ops), on_op(op) as each op is traced)."""
    if not math.isfinite(factor) or factor < 1:  # before the float64 re-run, not after it
        raise WhisperdiffError(f"--factor {factor} must be a finite number >= 1 (the measured spread times this)")
    ref = reference if isinstance(reference, Trace) else load_trace(reference)
    if against is None:
        if on_total is not None:
            on_total(len(ref.ops))
        with tempfile.TemporaryDirectory(prefix="whisperdiff-float64-") as tmp:
            twin = float64_twin(ref, Path(tmp) / "float64", on_op=on_op)
            measured = compare(twin, ref, replay=False)
        label = "openai-whisper in float64 on the same model and input"
    else:
        measured = compare(ref, against, replay=False)
        label = str(against.path if isinstance(against, Trace) else against)
    if not measured.comparable:
        raise WhisperdiffError(
            f"cannot measure a spread: the traces are not comparable ({measured.comparability.summary})"
        )
    proposed = propose(measured.table.to_dict("records"), factor=factor)
    return Calibration(ref.path, label, factor, proposed)
