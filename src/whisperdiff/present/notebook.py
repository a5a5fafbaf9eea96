"""Notebook display: a Comparison, CheckResult or Trace as a short HTML cell.

Registered with IPython's display formatters (`register`), which `import whisperdiff` does by itself
inside IPython, so the data types carry no rendering code of their own.
"""

from __future__ import annotations

from markupsafe import Markup, escape

from whisperdiff.analysis.compare import Comparison
from whisperdiff.gate.check import CheckResult
from whisperdiff.present.report import _findings, limits_text, template, verdict
from whisperdiff.present.report_tables import isnan
from whisperdiff.store.trace import Trace

NOTEBOOK_ROWS = 12


def comparison_html(c: Comparison) -> str:
    """Verdict, top findings and a short styled table (the diverged rows, or the largest errors)."""
    cls, headline = verdict(c)
    t = c.table
    cols = ["status", "cosine", "rel_l2", "introduced_rel_l2", "std_ratio"]
    short = t[t["diverged"]] if t["diverged"].any() else t.nlargest(5, "rel_l2")
    hidden = len(short) - NOTEBOOK_ROWS
    table = _styled(short.head(NOTEBOOK_ROWS)[cols], highlight=c.first_divergence)
    return template("notebook.html.j2").render(
        cls=cls,
        headline=headline,
        lines=[f"A {c.a}", f"B {c.b}", f"tolerance: {limits_text(c)}"],
        findings=_findings(c.findings[:3]),
        table=table,
        more=f"{hidden} more diverged ops; all {len(t)} in c.table" if hidden > 0 else f"all {len(t)} ops in c.table",
    )


def check_html(r) -> str:
    failures = r.failures
    rows = "".join(
        f"<tr><td>{_e(f.op)}</td><td>{_e(f.metric)}</td><td>{'' if isnan(f.value) else f'{f.value:.4g}'}"
        f"</td><td>{_e(f.limit)}</td></tr>"
        for f in failures[:NOTEBOOK_ROWS]
    )
    table = (
        Markup(
            f"<table><thead><tr><th>op</th><th>metric</th><th>value</th><th>limit</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
        if failures
        else None
    )
    more = len(failures) - NOTEBOOK_ROWS
    return template("notebook.html.j2").render(
        cls="good" if r.passed else "bad",
        headline=r.summary(),
        lines=[f"A {r.reference}", f"B {r.candidate}"],
        findings=_findings(r.findings[:1]),
        table=table,
        more=f"{more} more failures in r.failures" if more > 0 else "",
    )


def trace_html(tr) -> str:
    m = tr.manifest
    model = m.get("model", {})
    inp = m.get("input", {})
    lines = [
        f"{m.get('impl')} on {m.get('device')}, {m.get('dtype')}; {len(tr)} ops; taps {m.get('taps')}",
        f"model {model.get('id')} (weights sha256 {str(model.get('weights_sha256'))[:16]})",
        f"input {inp.get('path')} (sha256 {str(inp.get('sha256'))[:16]})",
    ]
    injected = [f.get("name") for f in m.get("injected") or []]
    if injected:
        lines.append(f"injected bugs: {', '.join(map(str, injected))}")
    if "transcript" in m:
        lines.append(f"transcript: {m['transcript'].get('text')}")
    shapes = [
        {"op": o["name"], "shape": "x".join(map(str, o["shape"])), "dtype": o.get("dtype")} for o in m.get("ops", [])
    ]
    import pandas as pd

    df = pd.DataFrame(shapes[:NOTEBOOK_ROWS]).set_index("op") if shapes else None
    more = len(shapes) - NOTEBOOK_ROWS
    return template("notebook.html.j2").render(
        cls="trace",
        headline=f"Trace {tr.path}",
        lines=lines,
        findings=[],
        table=_styled(df) if df is not None else None,
        more=f"{more} more ops: t.summary() has the statistics of all {len(shapes)}" if more > 0 else "",
    )


def _styled(df, highlight: str | None = None):
    """A pandas Styler as HTML: numbers formatted, the highlighted op's row in red."""
    fmt = {c: "{:.3g}" for c in df.columns if df[c].dtype.kind == "f"}
    if "cosine" in fmt:
        fmt["cosine"] = "{:.6f}"
    style = df.style.format(fmt, na_rep="")
    if highlight is not None:
        style = style.apply(lambda row: ["background:#ffd6d6" if row.name == highlight else "" for _ in row], axis=1)
    return Markup(style.to_html())


def _e(value) -> str:
    return str(escape(str(value)))


RENDERERS = {Comparison: comparison_html, CheckResult: check_html, Trace: trace_html}


def to_html(value) -> str | None:
    """The cell HTML of a Comparison, CheckResult or Trace; None for anything else."""
    render = next((f for t, f in RENDERERS.items() if isinstance(value, t)), None)
    return render(value) if render is not None else None


def register(shell) -> None:
    """Show Comparison, CheckResult and Trace as HTML in this IPython shell (`get_ipython()`)."""
    formatter = shell.display_formatter.formatters["text/html"]
    for kind, render in RENDERERS.items():
        formatter.for_type(kind, render)
