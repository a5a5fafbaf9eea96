"""What a captured port's trace says about itself (capture/captured_trace.trace_captured writes it): which
canonical ops automap could not align, and whether the port's own output is the value aligned as the
final op. The port's output is always what B's final op holds; when automap had aligned that op to an
earlier value, the ops the port applies after it are named here, so "ln_post diverges" comes with
"after the layer norm the port applies mul (file:line)".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from whisperdiff.analysis.diagnose import Finding


def captured_port(manifest: Mapping) -> dict | None:
    """B's capture record (a port traced by mark_all + trace_captured), or None for any other trace."""
    capture = (manifest.get("runner") or {}).get("capture")
    return capture if isinstance(capture, dict) else None


def port_output_findings(capture: dict, rel_l2_of: Mapping[str, float]) -> list[Finding]:
    """A finding at the final op when the port's output is not the value aligned as that op."""
    output = capture.get("output")
    if not isinstance(output, dict) or not output.get("after") or not isinstance(output.get("op"), str):
        return []
    op = output["op"]
    steps = [s for s in output["after"] if isinstance(s, dict)]
    said = ", then ".join(f"{s.get('op', '?')} ({s.get('where') or s.get('key', '?')})" for s in steps[:4])
    apart = output.get("rel_l2_output_vs_aligned")
    apart = apart if isinstance(apart, int | float) else math.nan
    rel = rel_l2_of.get(op, math.nan)
    differs = not apart <= 1e-4  # (NaN: unknown, so said as a difference)
    message = (
        f"{op}: B's own output is not the value that automap aligned as {op} ({output.get('aligned_key')}): "
        f"after it the port applies {said}{', ...' if len(steps) > 4 else ''}; the output is "
        f"{apart:.2g} (rel L2) from that value"
        + (f" and {rel:.2g} from A's {op}" if isinstance(rel, float) and not math.isnan(rel) else "")
        + ("; compare used the port's output" if differs else "; the two are the same numbers")
    )
    return [Finding("port_output", op, 1.0, message, severity="warning" if differs else "info")]


def alignment_notes(capture: dict) -> list[str]:
    """Where the port's dataflow overrode (or filled) what value agreement chose: said, not hidden."""
    notes = capture.get("notes")
    if not isinstance(notes, list):
        return []
    return [f"alignment: {n}" for n in notes if isinstance(n, str)][:20]


def train_mode_findings(capture: dict, first: str | None) -> list[Finding]:
    """A torch port captured in train mode: its dropout is active, so its values are random."""
    train = capture.get("train_mode")
    if not isinstance(train, list) or not train:
        return []
    listed = ", ".join(str(t) for t in train[:4]) + (", ..." if len(train) > 4 else "")
    return [
        Finding(
            "stochastic",
            first,
            0.95,
            f"B's torch module ran in train mode: dropout is active in {len(train)} module(s) ({listed}), so "
            "its values are random and not deterministic from run to run; call model.eval() before tracing",
        )
    ]
