"""Commands that re-run an implementation or check its inputs: patch, bisect, crossfeed, weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from whisperdiff.present.cli.app import app, err, escape_markup, out, print_json
from whisperdiff.present.cli.options import (
    IMPL_CHOICE,
    AudioOpt,
    CandidateArg,
    DeviceOpt,
    DtypeOpt,
    InjectOpt,
    Limits,
    ModelOpt,
    Pairing,
    ReferenceArg,
    RenameOpt,
    RerunImplOpt,
    known_faults,
)
from whisperdiff.present.cli.progress import progress
from whisperdiff.present.cli.render import print_comparison
from whisperdiff.present.cli.runs import run_compare, run_patch


@app.command("patch")
def patch_command(
    trace_a: ReferenceArg,
    trace_b: CandidateArg,
    ops: Annotated[
        str | None,
        typer.Option(
            metavar="GLOB",
            help="Glob of ops to patch (default: block boundaries and every op of the first divergent block).",
        ),
    ] = None,
    transcribe: Annotated[
        bool, typer.Option(help="Decode each patched output and compare its transcript with A's.")
    ] = True,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    html: Annotated[Path | None, typer.Option(help="Also write the HTML report with the patching chart here.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: cause, the unpatched error, each patched op.")
    ] = False,
    impl: RerunImplOpt = None,
):
    """Re-run B with A's activation substituted at one op at a time: the op whose patch restores B's output is the cause."""
    result = run_patch(trace_a, trace_b, ops=ops, transcribe=transcribe, model=model, device=device, impl=impl)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False, markup=False)
    if html is not None:
        from whisperdiff.present.report import write_report

        comparison = run_compare(trace_a, trace_b, Pairing(model=model), Limits(), transcribe=transcribe)
        write_report(comparison, html, patching=result)
    if as_json:
        print_json(result.to_json())
        return
    _print_patching(result, transcribe)
    if html is not None:
        out.print(f"wrote {html}", highlight=False)


def _print_patching(result, transcribe: bool) -> None:
    from whisperdiff.capture.transcript import cap_note
    from whisperdiff.experiments.patch import NOTHING_TO_RESTORE

    table = Table(caption=f"WER: {cap_note(result.max_tokens)}, as in compare and report" if transcribe else None)
    for col in ("patched op", "final rel L2", "restored", "WER", "transcript"):
        table.add_column(col, justify="left" if col in ("patched op", "transcript") else "right")
    for r in result.results:
        style = "bold red" if r.op == result.cause else None
        table.add_row(
            escape_markup(r.op),
            f"{r.final_rel_l2:.3g}",
            f"{r.restored:.1%}",
            "" if r.wer is None else f"{r.wer:.0%}",
            escape_markup((r.text or "")[:70]),
            style=style,
        )
    out.print(table)
    out.print(
        f"unpatched: final rel L2 {result.unpatched_rel_l2:.3g}"
        + (
            f", WER {result.unpatched_wer:.0%}: {escape_markup(result.unpatched_text or '')[:80]!s}"
            if transcribe
            else ""
        ),
        highlight=False,
    )
    if result.unpatched_wer == 0:
        out.print("[green]B's transcript is already A's (WER 0): the divergence does not matter for this input[/]")
    if result.cause:
        out.print(
            f"[bold red]cause: {escape_markup(result.cause)}[/]: patching it restores "
            f"{result.result(result.cause).restored:.0%} of the output; no earlier patch does",
            highlight=False,
        )
    elif result.unpatched_rel_l2 <= NOTHING_TO_RESTORE:
        out.print("[green]B's output already matches A's: nothing to restore[/]")
    else:
        out.print(
            "[yellow]no single patch restores the output[/]: the error enters at several ops, or at one not patched"
        )


@app.command("bisect")
def bisect_command(
    trace_a: ReferenceArg,
    impl: Annotated[str, typer.Option(metavar=IMPL_CHOICE, help="What runs B: max, torch or your own port.")] = "max",
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for each step's small trace (step1, step2).")
    ] = Path("bisect"),
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    inject: InjectOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: the steps, then the last step's compare document.")
    ] = False,
):
    """Where B first diverges from A, with small graphs: block outputs first, then inside the first divergent block."""
    from whisperdiff.experiments.bisect import bisect

    with progress("bisecting", status="loading", quiet=as_json) as bar:
        result = bisect(
            trace_a,
            impl=impl,
            model=model,
            device=device,
            dtype=dtype,
            inject=known_faults(inject),
            out=output,
            on_status=bar.on_status,
        )
    if as_json:
        print_json(result.to_json())
        return
    table = Table(title=f"bisect: {escape_markup(impl)} against {escape_markup(str(trace_a))}")
    for col in ("step", "taps", "compile s", "run + compare s", "first divergence", "trace"):
        table.add_column(col, justify="right" if col in ("taps", "compile s", "run + compare s") else "left")
    for i, s in enumerate(result.steps, 1):
        table.add_row(
            str(i),
            str(s.tap_count),
            f"{s.compile_seconds:.1f}",
            f"{s.run_seconds:.1f}",
            escape_markup(s.first_divergence or "none"),
            escape_markup(str(s.trace)),
        )
    out.print(table)
    print_comparison(result.comparison)


@app.command("crossfeed")
def crossfeed_command(
    model: ModelOpt = None,
    audio: AudioOpt = None,
    encoder: Annotated[str, typer.Option(metavar="<max|torch>", help="The candidate encoder: max or torch.")] = "max",
    decoder: Annotated[
        str,
        typer.Option(
            metavar="<max|torch|FILE.py:FACTORY>", help="The candidate decoder: max, torch or your own plugin."
        ),
    ] = "max",
    encoder_inject: Annotated[
        list[str] | None, typer.Option("--encoder-inject", metavar="FAULT", help="Encoder bug (repeatable).")
    ] = None,
    decoder_inject: Annotated[
        list[str] | None, typer.Option("--decoder-inject", metavar="FAULT", help="Decoder bug (repeatable).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: the verdict, its explanation and the four transcripts.")
    ] = False,
):
    """Encoder or decoder? Each encoder's output through each decoder: a 2 x 2 table of transcripts."""
    from whisperdiff.experiments.crossfeed import VERDICTS, crossfeed

    result = crossfeed(
        model,
        audio=audio,
        encoder=encoder,
        decoder=decoder,
        encoder_inject=encoder_inject,
        decoder_inject=decoder_inject,
    )
    if as_json:
        print_json(result.to_json())
        return
    wers = result.wer()
    table = Table()
    for col in ("encoder \\ decoder", "reference decoder (openai-whisper)", f"candidate decoder ({decoder})"):
        table.add_column(col)
    for e in ("reference", "candidate"):
        label = "reference encoder (openai-whisper)" if e == "reference" else f"candidate encoder ({encoder})"
        table.add_row(
            label,
            *[
                f"{escape_markup(result.texts[(e, d)])} [dim](WER {wers[(e, d)]:.0%})[/]"
                for d in ("reference", "candidate")
            ],
        )
    out.print(table)
    colour = "green" if result.verdict == "neither" else "bold red"
    out.print(f"[{colour}]{result.verdict}[/]: {VERDICTS[result.verdict]}", highlight=False)


@app.command("weights")
def weights_command(
    reference: Annotated[
        str,
        typer.Argument(
            metavar="A", help="Reference weights: a --model spec (default, tiny, a .pt, a CTranslate2 dir)."
        ),
    ],
    candidate: Annotated[
        str,
        typer.Argument(
            metavar="B", help="The weights your implementation used: an .npz of named arrays, a .pt, or a --model spec."
        ),
    ],
    rename: RenameOpt = None,
    all_tensors: Annotated[
        bool, typer.Option("--all", help="Also the decoder's tensors (default: encoder only).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: both sources and every tensor's check.")
    ] = False,
):
    """Per tensor: did B load A's weights? Missing, transposed, scaled or substituted tensors are named.
    Exit 0 when every tensor matches, 1 when any does not."""
    from whisperdiff.analysis.weights import compare_weights, load_weights
    from whisperdiff.mapping.align import load_rename_rules

    a, source_a = load_weights(reference)
    b, source_b = load_weights(candidate)
    checks = compare_weights(a, b, rules=load_rename_rules(rename), encoder_only=not all_tensors)
    bad = [c for c in checks if c.status != "ok"]
    if as_json:
        print_json({"a": source_a, "b": source_b, "tensors": [c.__dict__ for c in checks]})
    else:
        out.print(f"A {escape_markup(source_a)}\nB {escape_markup(source_b)}", highlight=False)
        by = Counter(c.matched_by for c in checks if c.b_name)
        if by:
            out.print(
                f"[dim]B's names are not A's: {by.get('value', 0)} tensors matched to A's by value, "
                f"{by.get('shape', 0)} by shape and name (B's name in brackets)[/]",
                highlight=False,
            )
        for c in bad:
            theirs = escape_markup(f" [{c.b_name}, matched by {c.matched_by}]") if c.b_name else ""
            out.print(
                f"[red]{c.status:11}[/] {escape_markup(c.name)}{theirs}: {escape_markup(c.detail)}", highlight=False
            )
        layouts = Counter(c.layout for c in checks if c.status == "ok" and c.layout not in ("", "as is"))
        for layout, n in layouts.items():
            out.print(f"[dim]{n} tensors matched after undoing a known layout change: {layout}[/]", highlight=False)
        colour = "green" if not bad else "bold red"
        out.print(
            f"[{colour}]{len(checks) - len(bad)} of {len(checks)} tensors match; {len(bad)} do not[/]", highlight=False
        )
    raise typer.Exit(1 if bad else 0)
