"""Library calls more than one command makes, each with its progress bar: compare (compare, report,
patch --html) and patch (patch, report --patch)."""

from __future__ import annotations

from whisperdiff.errors import WhisperdiffError
from whisperdiff.present.cli.options import Limits, Pairing
from whisperdiff.present.cli.progress import progress


def run_compare(trace_a, trace_b, pairing: Pairing, limits: Limits, *, transcribe: bool = False):
    """compare() as the options ask; traces that are not comparable stop here (exit 2) unless --force."""
    from whisperdiff.analysis.compare import compare

    with progress("comparing") as bar:
        result = compare(
            trace_a,
            trace_b,
            tolerance=limits.tolerance(),
            rename=pairing.rename,
            model=pairing.model,
            replay=pairing.replay,
            transcribe=transcribe,
            audio=pairing.audio,
            on_op=bar.on_op,
            on_total=bar.on_total,
        )
    stop_unless_comparable(result, pairing.force)
    return result


def stop_unless_comparable(c, force: bool) -> None:
    """Traces that are not comparable stop compare, report and check (exit 2) with the reasons only."""
    if not c.comparable and not force:
        raise WhisperdiffError(
            f"{c.a} and {c.b} are not comparable: {c.comparability.summary}; trace both "
            "with the same model and input (--force compares them anyway)"
        )


def run_patch(trace_a, trace_b, **options):
    """patch() with "k of n" patch points."""
    from whisperdiff.experiments.patch import patch

    with progress("patching", status="re-running B") as bar:
        return patch(trace_a, trace_b, **options, on_op=bar.on_op, on_total=bar.on_total, on_status=bar.on_status)
