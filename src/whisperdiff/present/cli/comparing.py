"""Commands that compare two traces: compare (the terminal) and report (one HTML page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whisperdiff.present.cli.app import app, escape_markup, out, print_json, size, write_atomic
from whisperdiff.present.cli.options import (
    CandidateArg,
    Limits,
    OutputAlias,
    Pairing,
    ReferenceArg,
    RerunImplOpt,
    TranscribeOpt,
    with_groups,
)
from whisperdiff.present.cli.progress import progress
from whisperdiff.present.cli.render import print_comparison, print_next_step
from whisperdiff.present.cli.runs import run_compare, run_patch


@app.command()
@with_groups
def compare(
    trace_a: ReferenceArg,
    trace_b: CandidateArg,
    *,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object, schema whisperdiff.compare (docs/json.md).")
    ] = False,
    csv: Annotated[Path | None, typer.Option(help="Also write the per-op table to this CSV file.")] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write the HTML report (as `whisperdiff report`) to this file.")
    ] = None,
    pairing: Pairing,
    limits: Limits,
    transcribe: TranscribeOpt = False,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all", "-v", "--verbose", help="Show every op, not only the ones that diverge and their neighbours."
        ),
    ] = False,
):
    """Where B first departs from A, how much error each op introduces, and the likely bug."""
    result = run_compare(trace_a, trace_b, pairing, limits, transcribe=transcribe)
    if csv is not None:
        write_atomic(csv, result.table.to_csv(index=False))
    if html is not None:
        from whisperdiff.present.report import write_report

        write_report(result, html)
    if as_json:
        print_json(result.to_json())
        return
    print_comparison(result, show_all)
    if html is not None:
        out.print(f"wrote {html}", highlight=False)
    print_next_step(result, html)


@app.command()
@with_groups
def report(
    trace_a: ReferenceArg,
    trace_b: CandidateArg,
    *,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file to write (default reports/A--vs--B.html).")
    ] = None,
    output_alias: OutputAlias = None,
    op: Annotated[
        list[str] | None, typer.Option("--op", metavar="OP", help="Also show this op up close (repeatable).")
    ] = None,
    head: Annotated[
        int | None, typer.Option(help="Attention head to show (default: the one that differs most).")
    ] = None,
    screenshot: Annotated[
        Path | None, typer.Option(help="Also open the report in headless Chromium and save a PNG of it.")
    ] = None,
    pairing: Pairing,
    limits: Limits,
    transcribe: TranscribeOpt = False,
    patch: Annotated[
        bool, typer.Option(help="Also run activation patching (`whisperdiff patch`) and chart it.")
    ] = False,
    impl: RerunImplOpt = None,
):
    """One self-contained HTML page: verdict, divergence plots, the first divergent op up close, every op, both runs."""
    from whisperdiff.present.report import verdict, write_report

    output = output or output_alias
    result = run_compare(trace_a, trace_b, pairing, limits, transcribe=transcribe)
    patching = None
    if patch:
        patching = run_patch(
            trace_a, trace_b, transcribe=transcribe or result.transcripts is not None, model=pairing.model, impl=impl
        )
    with progress("plotting") as bar:
        path = write_report(
            result, output, ops=op or [], head=head, patching=patching, on_op=bar.on_op, on_total=bar.on_total
        )
    style, headline = verdict(result)
    colour = {"good": "green", "bad": "bold red", "incomparable": "bold magenta"}[style]
    out.print(f"wrote {path}  ({size(path.stat().st_size)})", highlight=False)
    out.print(f"[{colour}]{escape_markup(headline)}[/]", highlight=False)
    if result.transcripts:
        from whisperdiff.capture.transcript import cap_note

        t = result.transcripts
        out.print(
            f"  transcripts {'identical' if t['same'] else 'differ'}: WER {t['wer']:.1%} ({cap_note(t.get('max_tokens'))})",
            highlight=False,
        )
    if patching is not None:
        out.print(f"  patching: cause {escape_markup(str(patching.cause))}", highlight=False)
        for note in patching.notes:
            out.print(f"  note: {escape_markup(note)}", highlight=False)
    for f in result.findings[:3]:
        out.print(
            f"  {f.kind} at {escape_markup(str(f.op or 'manifest'))} (confidence {f.confidence:.2f})", highlight=False
        )
    if screenshot is not None:
        from whisperdiff.present.browser import Browser

        with Browser() as browser:
            page = browser.open(path, screenshot=screenshot)
        out.print(
            f"wrote {screenshot}  (opened in {page.load_seconds:.2f} s; {len(page.images)} figures, "
            f"{len(page.broken_images)} broken)",
            highlight=False,
        )
