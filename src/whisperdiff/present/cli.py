"""The `whisperdiff` command: a thin typer layer over the Python API.

Every failure the user can fix ends as one line on stderr (`error: ...`) and exit code 2; an
interrupt ends with exit 130 and leaves no half-written trace; nothing prints a traceback unless
WHISPERDIFF_DEBUG=1.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated


def _early_exit(signum, frame):  # a signal before main() takes over: nothing has been written yet
    os.write(2, b"interrupted: nothing was written\n")
    os._exit(130)


# Run as the `whisperdiff` command (not imported by a program): a signal during start-up is exit 130, one line.
if __name__ == "__main__" or Path(sys.argv[0]).name == "whisperdiff" or Path(sys.argv[0]).parent.name == "whisperdiff":
    signal.signal(signal.SIGTERM, _early_exit)
    signal.signal(signal.SIGINT, _early_exit)

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from whisperdiff.errors import WhisperdiffError  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # conventional help: choices as {a|b}, flags without a type, brackets as typed
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Find where a Whisper encoder port's numbers first go wrong. Start with `whisperdiff trace`.",
)


def printable(text: str) -> str:
    """`text` with terminal control characters (ESC, C1, bidi overrides...) and lone surrogates shown
    as escapes, so nothing a trace holds can move the cursor, clear the screen or fail to print."""
    if text.isprintable() and not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    safe = []
    for ch in text:
        if ch in "\n\t" or (ch.isprintable() and not "\ud800" <= ch <= "\udfff"):
            safe.append(ch)
        else:
            safe.append(
                ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                if ord(ch) < 0x10000
                else f"\\U{ord(ch):08x}"
            )
    return "".join(safe)


class SafeConsole(Console):
    """Rich console that never passes control characters through (every string, table cells included,
    is rendered via render_str) and never turns :codes: into emoji."""

    def render_str(self, text: str, **kwargs):
        return super().render_str(printable(text), **kwargs)


# Not a terminal (a pipe, CI log): no 80-column wrapping of paths and tables.
out = SafeConsole(width=None if sys.stdout.isatty() else 200, emoji=False)
err = SafeConsole(stderr=True, width=None if sys.stderr.isatty() else 200, emoji=False)


def _print_version(value: bool) -> None:
    if value:
        from whisperdiff import __version__

        print(f"whisperdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
}


def _dtype(value: str) -> str:
    """--dtype with the usual short spellings (fp16, bf16, ...)."""
    if value.lower() not in DTYPES:
        raise typer.BadParameter(f"unknown dtype {value!r}; use float32, float16 (fp16), bfloat16 (bf16) or float64")
    return DTYPES[value.lower()]


def _faults(names: list[str] | None) -> list[str] | None:
    """--inject names checked up front, with a did-you-mean for a near miss."""
    import difflib

    from whisperdiff.capture.faults import FAULTS

    for name in names or []:
        if name not in FAULTS:
            near = difflib.get_close_matches(name, list(FAULTS), n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise WhisperdiffError(f"--inject {name!r} is not a known fault; {hint}`whisperdiff faults` lists them")
    return names


ImplChoice = "<torch|max|MODULE:FACTORY|FILE.py:FACTORY>"


def _device(value: str) -> str:
    if value.lower() not in ("auto", "cpu", "cuda", "gpu"):
        raise typer.BadParameter(f"unknown device {value!r}; use auto, cpu, cuda or gpu")
    return value.lower()


DeviceOpt = Annotated[
    str, typer.Option(metavar="<auto|cpu|cuda|gpu>", callback=_device, help="Where to run: auto, cpu or cuda (gpu).")
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        metavar="<float32|float16|bfloat16|float64>",
        callback=_dtype,
        help="Precision (fp32/fp16/bf16/fp64 also accepted; float64: torch only).",
    ),
]
TapsOpt = Annotated[
    str,
    typer.Option(
        metavar="<default|all|output|GLOBS>",
        help="default (all but attention probabilities), all, output (ln_post only), or comma-separated names/globs.",
    ),
]
InjectOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="FAULT", help="Plant a porting bug (repeatable); `whisperdiff faults` lists them."),
]
OutputAlias = Annotated[Path | None, typer.Option("--output", hidden=True)]  # the old spelling of --out

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="SPEC",
        help="Model spec: default (embedded tiny.en), a Whisper name, a .pt path, a CTranslate2 dir, or random:PRESET[,seed=N][,dim=V]",
    ),
]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def trace(
    impl: Annotated[
        str,
        typer.Option(
            metavar=ImplChoice,
            help="Implementation to run: torch (openai-whisper reference), max (MAX Graph encoder), or your own (a factory).",
        ),
    ] = "torch",
    model: ModelOpt = None,
    audio: Annotated[
        Path | None,
        typer.Option(help="Audio file (WAV read directly; other formats via ffmpeg). Default: the shipped clip."),
    ] = None,
    mel: Annotated[
        Path | None, typer.Option(help="A precomputed log-mel .npy of shape n_mels x 3000, instead of audio.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Trace directory (default traces/IMPL-MODEL-INPUT).")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    taps: TapsOpt = "default",
    inject: InjectOpt = None,
    window: Annotated[
        str,
        typer.Option(
            metavar="<N|all>",
            help="Which 30 s window of a longer clip: a number, or all (one trace per window, OUT.wN).",
        ),
    ] = "0",
    transcribe: Annotated[
        bool, typer.Option(help="Also decode the output with openai-whisper's decoder; the text goes in the manifest.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the trace's path and manifest summary as JSON.")
    ] = False,
):
    """Run an encoder on one input and save every intermediate activation under canonical names."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from whisperdiff.capture.session import Session

    inject = _faults(inject)

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[op]}"),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    ) as progress:
        task = progress.add_task(f"tracing {impl}", total=None, op="loading model")
        session = Session(
            impl,
            model=model,
            device=device,
            dtype=dtype,
            taps=taps,
            inject=inject,
            on_status=lambda text: progress.update(task, op=text),
        )
        progress.update(task, total=len(session.tap_names), op="")  # mel is one of the taps
        on_op = lambda name: progress.update(task, advance=1, op=name)  # noqa: E731
        if window == "all" and mel is None:
            results = session.trace_windows(audio=audio, out=out_dir, transcribe=transcribe)
        else:
            window = "0" if window == "all" else window  # a --mel file is one window
            if not window.isdigit():
                raise WhisperdiffError(f"--window {window!r}: give a window number (0, 1, ...) or all")
            results = [
                session.trace(audio=audio, mel=mel, out=out_dir, window=int(window), transcribe=transcribe, on_op=on_op)
            ]
    if as_json:
        summaries = [_trace_summary(r) for r in results]
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=1))
        return
    for result in results:
        _print_trace(result)
    inp = results[-1].manifest["input"]
    if window != "all" and inp.get("n_windows", 1) > 1:
        err.print(
            f"[yellow]warning:[/] the input is {inp['duration_s']:.1f} s: only its 30 s window {window} was traced "
            f"({inp['n_windows']} windows in all; --window all traces each)"
        )


def _trace_summary(result) -> dict:
    m = result.manifest
    return {
        "trace": str(result.path),
        "impl": m["impl"],
        "device": m["device"],
        "dtype": m["dtype"],
        "model": m["model"]["id"],
        "model_source": m["model"]["source"],
        "weights_sha256": m["model"]["weights_sha256"],
        "input": m["input"]["path"],
        "input_sha256": m["input"]["sha256"],
        "window": m["input"].get("window", 0),
        "ops": len(result),
        "bytes": result.nbytes,
        "seconds": m["run"]["total_seconds"],
        "injected": [f["name"] for f in m["injected"]],
        "transcript": m.get("transcript", {}).get("text"),
    }


def _print_trace(result) -> None:
    m = result.manifest
    graph = ""
    if "compile_seconds" in m["runner"]:  # the MAX graph: the first run for these dims compiles, later ones load
        runner = m["runner"]
        graph = (
            f"; MAX graph loaded from cache in {runner['compile_seconds']:.1f} s"
            if runner.get("compile_cache_hit")
            else f"; first the MAX graph compiled in {runner['compile_seconds']:.0f} s, cached for next time"
        )
    out.print(
        f"[green]wrote[/] {result.path}  ({len(result)} ops, {_size(result.nbytes)}, {m['run']['total_seconds']:.1f} s{graph})"
    )
    out.print(
        f"  model   {m['model']['id']}  [dim]{m['model']['source']}  weights sha256 {m['model']['weights_sha256'][:16]}[/]",
        highlight=False,
    )
    inp = m["input"]
    window = f"  window {inp['window']} of {inp['n_windows']}" if inp.get("n_windows", 1) > 1 else ""
    out.print(
        f"  input   {inp['path']}  [dim]sha256 {inp['sha256'][:16]}  frontend {inp['frontend']}[/]{window}",
        highlight=False,
    )
    runner = m["runner"]
    compiled = ""
    if "compile_seconds" in runner:
        compiled = f"  [dim]graph {'loaded from cache' if runner['compile_cache_hit'] else 'compiled'} in {runner['compile_seconds']:.1f} s[/]"
    out.print(f"  runner  {m['impl']} on {m['device']}, {m['dtype']}{compiled}", highlight=False)
    for fault in m["injected"]:
        out.print(
            f"  [yellow]injected[/] {fault['name']}: {fault['description']} (first shows at {fault['first_op']})",
            highlight=False,
        )
    if "transcript" in m:
        text = m["transcript"]["text"]
        out.print(f"  text    {escape_markup(text[:200])}{' ...' if len(text) > 200 else ''}", highlight=False)


@app.command()
def transcribe(
    impl: Annotated[
        str, typer.Option(metavar=ImplChoice, help="Encoder: torch (openai-whisper), max (MAX Graph) or your own.")
    ] = "torch",
    model: ModelOpt = None,
    audio: Annotated[
        Path | None, typer.Option(help="Audio file; every 30 s window is encoded. Default: the shipped clip.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Trace directory (OUT.wN per window for long audio).")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    taps: Annotated[
        str,
        typer.Option(metavar="<default|all|output|GLOBS>", help="As for trace (output: ln_post only, the fastest)."),
    ] = "default",
    inject: InjectOpt = None,
    decoder: Annotated[
        str | None,
        typer.Option(
            metavar="<torch|max>",
            help="Decoder: torch (openai-whisper) or max (the MAX decoder graph). "
            "Default: max with --impl max (MAX for both halves), else torch.",
        ),
    ] = None,
):
    """Encode every window with the chosen encoder, decode (openai-whisper's greedy search), print the text.

    Each window is traced like `trace` and its transcript stored in the trace's manifest."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from whisperdiff.capture.session import Session

    inject = _faults(inject)
    with Progress(
        TextColumn("[bold]transcribing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[what]}"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("transcribe", total=None, what="loading model")
        session = Session(
            impl,
            model=model,
            device=device,
            dtype=dtype,
            taps=taps,
            inject=inject,
            on_status=lambda text: progress.update(task, what=text),
        )
        session.decoder_impl = decoder or ("max" if impl == "max" else "torch")
        if session.decoder_impl not in ("torch", "max"):
            raise WhisperdiffError(f"unknown --decoder {decoder!r}; use torch or max")
        results = session.trace_windows(
            audio=audio,
            out=out_dir,
            transcribe=True,
            on_window=lambda w, n: progress.update(task, total=n, completed=w, what=f"window {w + 1} of {n}"),
        )
    for r in results:
        inp = r.manifest["input"]
        out.print(
            f"[dim]{r.path}  window {inp.get('window', 0)} ({inp.get('window', 0) * 30}-"
            f"{min((inp.get('window', 0) + 1) * 30, inp.get('duration_s') or 30):.0f} s)[/]",
            highlight=False,
        )
    text = " ".join(r.manifest["transcript"]["text"] for r in results).strip()
    out.print(escape_markup(text), highlight=False)


def _listing_table(listings) -> Table:
    table = Table(title=None, show_lines=False)
    for col in ("trace", "status", "impl", "model", "input", "ops", "size", "created"):
        table.add_column(col, justify="right" if col in ("ops", "size") else "left")
    for item in listings:
        row = item.row()
        status = row["status"]
        style = "green" if status == "complete" else "red"
        table.add_row(  # every cell from a manifest is escaped: a trace's text is never markup
            escape_markup(row["trace"]),
            f"[{style}]{escape_markup(status)}[/]",
            escape_markup(str(row["impl"] or "-")),
            escape_markup(str(row["model"] or "-")),
            escape_markup(str(row["input"] or "-")),
            str(row["ops"]) if row["ops"] is not None else "-",
            _size(row["bytes"]),
            escape_markup(str(row["created"] or "-")),
        )
    return table


@app.command("ls")
def ls(
    directory: Annotated[Path, typer.Argument(help="Folder holding traces (searched with its subfolders).")] = Path(
        "traces"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list of traces.")] = False,
):
    """List traces with impl, model, input, op count, size; incomplete or damaged ones are marked."""
    listings = _find_traces(directory)
    if not listings:
        raise WhisperdiffError(f"no traces in {directory}; make one with `whisperdiff trace`")
    if as_json:
        print(json.dumps([item.row() for item in listings], indent=1))
    else:
        out.print(_listing_table(listings))


def _find_traces(directory: Path, depth: int = 4) -> list:
    """list_traces of `directory` and of its subfolders that are not traces (a few levels deep)."""
    from whisperdiff.store.trace import MANIFEST, list_traces

    listings = list_traces(directory)
    if (directory / MANIFEST).exists() or depth == 0:
        return listings
    seen = {item.path for item in listings}
    try:
        subfolders = sorted(
            p
            for p in directory.iterdir()
            if p.is_dir() and not p.is_symlink() and p not in seen and not p.name.startswith(".")
        )
    except OSError:
        return listings
    for sub in subfolders:
        listings += _find_traces(sub, depth - 1)
    return listings


@app.command()
def show(
    trace_dir: Annotated[Path, typer.Argument(metavar="TRACE", help="A trace directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Manifest and per-op statistics as JSON.")] = False,
):
    """Per-op statistics of one trace: shape, dtype, mean, std, min, max, NaN/Inf counts."""
    from whisperdiff.store.trace import load_trace

    t = load_trace(trace_dir)
    df = t.summary()
    if as_json:
        print(json.dumps({"trace": str(t.path), "manifest": t.manifest, "ops": df.to_dict(orient="records")}, indent=1))
        return
    m = t.manifest
    e, model, inp = escape_markup, m.get("model", {}), m.get("input", {})
    out.print(
        f"[bold]{e(str(t.path))}[/]  {e(str(m.get('impl')))} on {e(str(m.get('device')))}, {e(str(m.get('dtype')))}",
        highlight=False,
    )
    out.print(
        f"  model {e(str(model.get('id')))}  [dim]{e(str(model.get('source')))}  "
        f"weights sha256 {e(str(model.get('weights_sha256', ''))[:16])}[/]",
        highlight=False,
    )
    out.print(
        f"  input {e(str(inp.get('path')))}  [dim]sha256 {e(str(inp.get('sha256', ''))[:16])}[/]", highlight=False
    )
    table = Table()
    for col in ("op", "shape", "dtype", "mean", "std", "min", "max", "nan", "inf"):
        table.add_column(col, justify="left" if col in ("op", "shape", "dtype") else "right")
    for row in df.itertuples(index=False):
        bad = row.nan or row.inf
        table.add_row(
            escape_markup(row.op),
            row.shape,
            row.dtype,
            _fmt(row.mean),
            _fmt(row.std),
            _fmt(row.min),
            _fmt(row.max),
            f"[red]{row.nan}[/]" if row.nan else "0",
            f"[red]{row.inf}[/]" if row.inf else "0",
            style="red" if bad else None,
        )
    out.print(table)


ReferenceArg = Annotated[Path, typer.Argument(metavar="A", help="Reference trace (e.g. --impl torch).")]
CandidateArg = Annotated[Path, typer.Argument(metavar="B", help="Candidate trace (e.g. your port).")]
RenameOpt = Annotated[
    Path | None,
    typer.Option(
        help='JSON/TOML rules mapping B\'s op names to canonical ones: {"rename": {"layers.*.q": "blocks.*.attn.q"}}.'
    ),
]
ReplayOpt = Annotated[bool, typer.Option(help="Replay each op on B's inputs to split introduced from inherited error.")]
MinCosineOpt = Annotated[float, typer.Option(help="An op diverges below this cosine.")]
MaxRelL2Opt = Annotated[float, typer.Option(help="An op diverges above this relative L2 error.")]
AtolOpt = Annotated[float, typer.Option(help="Absolute part of the element-wise mismatch test.")]
RtolOpt = Annotated[float, typer.Option(help="Relative part of the element-wise mismatch test.")]
TranscribeOpt = Annotated[
    bool,
    typer.Option(
        help="Decode both outputs with openai-whisper's decoder (when the traces carry no transcript) and compare the texts."
    ),
]
TolerancesOpt = Annotated[
    str | None,
    typer.Option(
        "--tolerances",
        "-t",
        metavar="<float32|half|FILE.toml>",
        help="TOML tolerance file, or a shipped one: float32 (default), half.",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Go on even when the traces are not comparable (other weights, input or dims).")
]
AllOpt = Annotated[
    bool,
    typer.Option(
        "--all", "-v", "--verbose", help="Show every op, not only the ones that diverge and their neighbours."
    ),
]
CompareTolerancesOpt = Annotated[
    str | None,
    typer.Option(
        "--tolerances",
        "-t",
        metavar="<float32|half|FILE.toml>",
        help="Per-op limits from a TOML file or a shipped one (float32, half); replaces the four options above.",
    ),
]


def _run_compare(
    trace_a, trace_b, *, rename, model, replay, min_cosine, max_rel_l2, atol, rtol, tolerances=None, transcribe=False
):
    """compare() with a progress bar on a terminal (shared by `compare` and `report`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from whisperdiff.analysis.compare import compare as run_compare
    from whisperdiff.measure.tolerances import Tolerance, load_tolerances

    tolerance = (
        load_tolerances(tolerances)
        if tolerances is not None
        else Tolerance(min_cosine=min_cosine, max_rel_l2=max_rel_l2, atol=atol, rtol=rtol)
    )
    with Progress(
        TextColumn("[bold]comparing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[op]}"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("compare", total=None, op="")
        return run_compare(
            trace_a,
            trace_b,
            tolerance=tolerance,
            rename=rename,
            model=model,
            replay=replay,
            transcribe=transcribe,
            on_op=lambda name: progress.update(task, advance=1, op=name),
            on_total=lambda n: progress.update(task, total=n),
        )


def _stop_unless_comparable(c, force: bool) -> None:
    """Traces that are not comparable stop compare, report and check (exit 2) with the reasons only."""
    if not c.comparable and not force:
        from whisperdiff.analysis.diagnose import not_comparable_reasons

        raise WhisperdiffError(
            f"{c.a} and {c.b} are not comparable: {not_comparable_reasons(c.warnings)}; trace both "
            "with the same model and input (--force compares them anyway)"
        )


@app.command()
def compare(
    trace_a: ReferenceArg,
    trace_b: CandidateArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: first_divergence, ops, findings, ...")
    ] = False,
    csv: Annotated[Path | None, typer.Option(help="Also write the per-op table to this CSV file.")] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write the HTML report (as `whisperdiff report`) to this file.")
    ] = None,
    rename: RenameOpt = None,
    model: ModelOpt = None,
    replay: ReplayOpt = True,
    min_cosine: MinCosineOpt = 0.99999,
    max_rel_l2: MaxRelL2Opt = 1e-4,
    atol: AtolOpt = 1e-4,
    rtol: RtolOpt = 1e-3,
    tolerances: CompareTolerancesOpt = None,
    transcribe: TranscribeOpt = False,
    show_all: AllOpt = False,
    force: ForceOpt = False,
):
    """Where B first departs from A, how much error each op introduces, and the likely bug."""
    result = _run_compare(
        trace_a,
        trace_b,
        rename=rename,
        model=model,
        replay=replay,
        min_cosine=min_cosine,
        max_rel_l2=max_rel_l2,
        atol=atol,
        rtol=rtol,
        tolerances=tolerances,
        transcribe=transcribe,
    )
    _stop_unless_comparable(result, force)
    if csv is not None:
        _write_atomic(csv, result.table.to_csv(index=False))
    if html is not None:
        from whisperdiff.present.report import write_report

        write_report(result, html)
    if as_json:
        print(json.dumps(result.to_json(), indent=1))
        return
    _print_comparison(result, show_all)
    if html is not None:
        out.print(f"wrote {html}", highlight=False)
    _next_step(result, html)


@app.command()
def report(
    trace_a: ReferenceArg,
    trace_b: CandidateArg,
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
    rename: RenameOpt = None,
    model: ModelOpt = None,
    replay: ReplayOpt = True,
    min_cosine: MinCosineOpt = 0.99999,
    max_rel_l2: MaxRelL2Opt = 1e-4,
    atol: AtolOpt = 1e-4,
    rtol: RtolOpt = 1e-3,
    tolerances: CompareTolerancesOpt = None,
    transcribe: TranscribeOpt = False,
    patch: Annotated[
        bool, typer.Option(help="Also run activation patching (`whisperdiff patch`) and chart it.")
    ] = False,
    impl: Annotated[
        str | None,
        typer.Option(
            metavar=ImplChoice,
            help="With --patch: what re-runs B (default: B's impl if torch or max; a trace never names code to run).",
        ),
    ] = None,
    force: ForceOpt = False,
):
    """One self-contained HTML page: verdict, divergence plots, the first divergent op up close, every op, both runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from whisperdiff.present.report import verdict, write_report

    output = output or output_alias
    result = _run_compare(
        trace_a,
        trace_b,
        rename=rename,
        model=model,
        replay=replay,
        min_cosine=min_cosine,
        max_rel_l2=max_rel_l2,
        atol=atol,
        rtol=rtol,
        tolerances=tolerances,
        transcribe=transcribe,
    )
    _stop_unless_comparable(result, force)
    patching = None
    if patch:
        patching = _run_patch(
            trace_a, trace_b, transcribe=transcribe or result.transcripts is not None, model=model, impl=impl
        )
    with Progress(
        TextColumn("[bold]plotting"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("plot", total=None)
        path = write_report(
            result,
            output,
            ops=op or [],
            head=head,
            patching=patching,
            on_figure=lambda done, total: progress.update(task, completed=done, total=total),
        )
    style, headline = verdict(result)
    colour = {"good": "green", "bad": "bold red", "incomparable": "bold magenta"}[style]
    out.print(f"wrote {path}  ({_size(path.stat().st_size)})", highlight=False)
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


@app.command()
def check(
    traces: Annotated[
        list[Path], typer.Argument(metavar="[A] B", help="Reference and candidate traces (only B with --golden).")
    ],
    tolerances: TolerancesOpt = None,
    golden: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Check B against this golden set instead of a reference trace.")
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Also write JUnit XML here: one test case per op.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: passed, failures, ops.")] = False,
    rename: RenameOpt = None,
    model: ModelOpt = None,
    replay: ReplayOpt = True,
    force: ForceOpt = False,
):
    """Pass (exit 0) when every op of B is within tolerance of A, fail (exit 1) naming each op that is not."""
    from whisperdiff.gate.check import check as run_check
    from whisperdiff.gate.check import check_golden, junit_xml
    from whisperdiff.measure.tolerances import load_tolerances

    want = 1 if golden is not None else 2
    if len(traces) != want:
        raise WhisperdiffError(
            "check takes two traces, A (reference) and B (candidate); or one, B, with --golden DIR"
            if want == 2
            else "with --golden, check takes one trace: the candidate B"
        )
    tol = load_tolerances(tolerances)
    if golden is not None:
        result = check_golden(golden, traces[0], tol)
    else:
        result = run_check(traces[0], traces[1], tol, rename=rename, model=model, replay=replay, force=force)
    if junit is not None:
        _write_atomic(junit, junit_xml(result))
    if as_json:
        print(
            json.dumps(
                {
                    "passed": result.passed,
                    "first_failure": result.first_failure,
                    "summary": result.summary(),
                    "failures": [
                        {**f.__dict__, "value": None if f.value != f.value else f.value} for f in result.failures
                    ],
                    "warnings": result.warnings,
                },
                indent=1,
            )
        )
    else:
        out.print(
            f"A {escape_markup(str(result.reference))}\nB {escape_markup(str(result.candidate))}", highlight=False
        )
        for w in result.warnings:
            out.print(f"[yellow]{escape_markup(w)}[/]", highlight=False)
        for f in result.failures:
            out.print(f"[red]✗[/] {escape_markup(str(f))}", highlight=False)
        for f in result.findings[:1]:
            out.print(
                f"likely cause: {f.kind} at {escape_markup(str(f.op))}: {escape_markup(f.message)}", highlight=False
            )
        colour = "green" if result.passed else "bold red"
        out.print(f"[{colour}]{escape_markup(result.summary())}[/]", highlight=False)
        if junit is not None:
            out.print(f"wrote {junit}", highlight=False)
    raise typer.Exit(0 if result.passed else 1)


@app.command()
def tolerances(
    reference: Annotated[Path, typer.Argument(metavar="REF", help="A clean reference trace.")],
    other: Annotated[
        Path | None,
        typer.Option(
            "--from", help="Measure REF against this run (another device, dtype or build) instead of a float64 re-run."
        ),
    ] = None,
    factor: Annotated[float, typer.Option(help="Safety factor on the measured spread.")] = 10.0,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write the TOML here (default: print it).")] = None,
    output_alias: OutputAlias = None,
):
    """Propose a tolerance file from a measured noise floor: REF against float64 (or --from OTHER), times a factor."""
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from whisperdiff.analysis.compare import compare as run_compare
    from whisperdiff.capture.session import float64_twin
    from whisperdiff.measure.tolerances import propose
    from whisperdiff.store.trace import load_trace

    output = output or output_alias
    if not math.isfinite(factor) or factor < 1:  # before the float64 re-run, not after it
        raise WhisperdiffError(f"--factor {factor} must be a finite number >= 1 (the measured spread times this)")
    ref = load_trace(reference)
    if other is None:
        import tempfile

        with (
            tempfile.TemporaryDirectory(prefix="whisperdiff-float64-") as tmp,
            Progress(
                TextColumn("[bold]float64 re-run"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[op]}"),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            ) as progress,
        ):
            task = progress.add_task("float64", total=len(ref.ops), op="")
            twin = float64_twin(
                ref, Path(tmp) / "float64", on_op=lambda name: progress.update(task, advance=1, op=name)
            )
            measured = run_compare(twin, ref, replay=False)
            against = "openai-whisper in float64 on the same model and input"
    else:
        measured = run_compare(ref, other, replay=False)
        against = str(other)
    if not measured.comparable:
        from whisperdiff.analysis.diagnose import not_comparable_reasons

        raise WhisperdiffError(
            f"cannot measure a spread: the traces are not comparable ({not_comparable_reasons(measured.warnings)})"
        )
    proposed = propose(measured.table.to_dict("records"), factor=factor)
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    text = proposed.to_toml(
        f"whisperdiff tolerances, proposed {when}: the spread of {reference}\nagainst {against},"
        f" times {factor:g}, per op kind (blocks.* folded).\n"
        f"Use: whisperdiff check A B --tolerances THIS_FILE"
    )
    if output is None:
        print(text, end="")
    else:
        _write_atomic(output, text)
        err.print(f"wrote {output} ({len(proposed.rules)} rules)", highlight=False)


golden_app = typer.Typer(
    help="Golden sets: a small reference (per-op statistics and fixed samples) to check runs against.",
    no_args_is_help=True,
)
app.add_typer(golden_app, name="golden")


@golden_app.command("save")
def golden_save(
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="The reference trace to keep.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (e.g. tests/golden/tiny.en).")] = Path(
        "golden"
    ),
    output_alias: OutputAlias = None,
    samples: Annotated[int, typer.Option(help="Elements sampled per op.")] = 2048,
):
    """Save a golden set of TRACE: small enough for git; check runs with `whisperdiff check B --golden DIR`."""
    from whisperdiff.gate.golden import save_golden

    output = output_alias or output

    path = save_golden(trace_path, output, samples=samples)
    size = sum(f.stat().st_size for f in path.iterdir())
    out.print(f"wrote {path}  ({_size(size)}, {samples} samples per op)", highlight=False)


def _run_patch(trace_a, trace_b, **kwargs):
    """patch() with "k of n" patch points on a terminal (shared by `patch` and `report --patch`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from whisperdiff.experiments.patch import patch as run_patch

    with Progress(
        TextColumn("[bold]patching"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[op]}"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("patch", total=None, op="re-running B")
        result = run_patch(
            trace_a, trace_b, **kwargs, on_progress=lambda k, n, op: progress.update(task, completed=k, total=n, op=op)
        )
        progress.update(task, completed=len(result.results), total=len(result.results), op="")  # n of n
        return result


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
    impl: Annotated[
        str | None,
        typer.Option(
            metavar=ImplChoice,
            help="What re-runs B: torch, max, module:factory or file.py:factory (default: B's impl if torch or max; a trace never names code to run).",
        ),
    ] = None,
):
    """Re-run B with A's activation substituted at one op at a time: the op whose patch restores B's output is the cause."""
    result = _run_patch(trace_a, trace_b, ops=ops, transcribe=transcribe, model=model, device=device, impl=impl)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False, markup=False)
    if html is not None:
        from whisperdiff.present.report import write_report

        write_report(
            _run_compare(
                trace_a,
                trace_b,
                rename=None,
                model=model,
                replay=True,
                min_cosine=0.99999,
                max_rel_l2=1e-4,
                atol=1e-4,
                rtol=1e-3,
                transcribe=transcribe,
            ),
            html,
            patching=result,
        )
    if as_json:
        print(json.dumps(result.to_json(), indent=1))
        return
    from whisperdiff.capture.transcript import cap_note

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
    elif result.unpatched_rel_l2 <= 1e-4:
        out.print("[green]B's output already matches A's: nothing to restore[/]")
    else:
        out.print(
            "[yellow]no single patch restores the output[/]: the error enters at several ops, or at one not patched"
        )
    if html is not None:
        out.print(f"wrote {html}", highlight=False)


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
        print(json.dumps({"a": source_a, "b": source_b, "tensors": [c.__dict__ for c in checks]}, indent=1))
    else:
        out.print(f"A {escape_markup(source_a)}\nB {escape_markup(source_b)}", highlight=False)
        for c in bad:
            out.print(f"[red]{c.status:11}[/] {escape_markup(c.name)}: {escape_markup(c.detail)}", highlight=False)
        layouts = Counter(c.layout for c in checks if c.status == "ok" and c.layout not in ("", "as is"))
        for layout, n in layouts.items():
            out.print(f"[dim]{n} tensors matched after undoing a known layout change: {layout}[/]", highlight=False)
        colour = "green" if not bad else "bold red"
        out.print(
            f"[{colour}]{len(checks) - len(bad)} of {len(checks)} tensors match; {len(bad)} do not[/]", highlight=False
        )
    raise typer.Exit(1 if bad else 0)


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _write_atomic(path: Path, text: str) -> None:
    from whisperdiff.store.trace import write_text_atomic

    write_text_atomic(path, text)


def _shown_rows(c, show_all: bool) -> list[int]:
    """Row positions compare prints: every row with --all; else the diverged rows, the ops that
    introduce the most error, and each one's neighbours (so the step into the error shows)."""
    from whisperdiff.present.report import top_introducers

    t = c.table
    if show_all:
        return list(range(len(t)))
    position = {op: i for i, op in enumerate(t.index)}
    limit = c.tolerance.max_rel_l2 or 0
    introduces = t["diverged"] & ~(t["introduced_rel_l2"] <= limit)  # NaN (no replay, missing op) counts
    keys = [position[op] for op in t.index[introduces.to_numpy()]]
    keys += [position[x["op"]] for x in top_introducers(c, 3)]
    if c.first_divergence in position:
        keys.append(position[c.first_divergence])
    status = t["status"].to_numpy()
    near = {j for i in keys for j in (i - 1, i, i + 1) if 0 <= j < len(t) and (j == i or status[j] != "not_traced")}
    return sorted(near)


def _print_comparison(c, show_all: bool = False) -> None:
    from rich.markup import escape

    from whisperdiff.capture.transcript import cap_note

    ma, mb = c.manifest_a, c.manifest_b
    for side, path, m in (("A", c.a, ma), ("B", c.b, mb)):
        injected = "".join(f" [yellow]+{escape(f['name'])}[/]" for f in m.get("injected") or [])
        out.print(
            f"[bold]{side}[/] {escape(str(path))}  {escape(str(m.get('impl')))} on {m.get('device')}, "
            f"{m.get('dtype')}  [dim]{escape(str(m['model'].get('id')))}[/]{injected}",
            highlight=False,
        )
    for w in c.warnings:
        style = "bold red" if w.startswith("NOT COMPARABLE") else "yellow"
        out.print(f"[{style}]{escape(w)}[/]", highlight=False)
    shown = _shown_rows(c, show_all)
    records = c.table.to_dict("records")
    if shown:
        table = Table(show_lines=False)
        for col in ("", "#", "op", "cosine", "rel L2", "introduced", "max abs", "mean A", "mean B", "std A", "std B"):
            table.add_column(col, justify="left" if col in ("", "op") else "right")
        tol = c.tolerance
        previous = -1
        for i in shown:
            if i > previous + 1:  # a gap: the ops between are folded
                table.add_row("", "", f"[dim]... {i - previous - 1} ops[/]", *[""] * 8)
            previous = i
            row = records[i]
            marker = "▶" if row["op"] == c.first_divergence else ""
            if row["status"] in ("missing_in_b", "missing_in_a", "shape_mismatch", "not_traced"):
                colour = "dim" if row["status"] == "not_traced" else "red"
                table.add_row(
                    marker, str(i), escape(row["op"]), f"[{colour}]{row['status'].replace('_', ' ')}[/]", *[""] * 7
                )
                continue
            intro = row["introduced_rel_l2"]
            intro_txt = (
                "-"
                if intro != intro
                else (f"[bold red]{intro:.2e}[/]" if intro > (tol.max_rel_l2 or 0) else f"{intro:.1e}")
            )
            table.add_row(
                marker,
                str(i),
                escape(row["op"]),
                f"{row['cosine']:.6f}",
                f"{row['rel_l2']:.2e}",
                intro_txt,
                _fmt(row["max_abs"]),
                _fmt(row["mean_a"]),
                _fmt(row["mean_b"]),
                _fmt(row["std_a"]),
                _fmt(row["std_b"]),
                style="red" if row["diverged"] else None,
            )
        out.print(table)
    hidden = [records[i] for i in range(len(records)) if i not in set(shown)]
    if hidden:
        counts = Counter(
            "within tolerance"
            if r["status"] == "ok"
            else "diverged, error inherited"
            if r["status"] == "diverged"
            else r["status"].replace("_", " ")
            for r in hidden
        )
        matched = [r for r in hidden if r["rel_l2"] == r["rel_l2"]]
        worst = max(matched, key=lambda r: r["rel_l2"]) if matched else None
        out.print(
            f"[dim]{len(hidden)} ops not shown: "
            + ", ".join(f"{n} {what}" for what, n in counts.items())
            + (f" (largest rel L2 {worst['rel_l2']:.2g} at {escape(worst['op'])})" if worst else "")
            + "; -v/--all shows every op[/]",
            highlight=False,
        )
    limits = escape(c.limits())
    if c.first_divergence is None:
        out.print(f"[green]no divergence[/]: every op within the limits: {limits}", highlight=False)
    else:
        out.print(
            f"[bold red]first divergence: {escape(c.first_divergence)}[/] [dim](limits: {limits})[/]", highlight=False
        )
    if getattr(c, "decoder", None):  # decoder traces: (op, position) and the logits measures
        _print_decoder_summary(c.decoder)
    for f in c.findings:
        colour = {"error": "red", "warning": "yellow", "info": "dim"}[f.severity]
        also = (
            f" [dim](also at {len(f.also_at)} later ops: {escape(', '.join(f.also_at[:3]))}{', ...' if len(f.also_at) > 3 else ''})[/]"
            if f.also_at
            else ""
        )
        out.print(
            f"[{colour}]{f.kind}[/] at {escape(str(f.op or 'manifest'))} [dim](confidence {f.confidence:.2f})[/]: "
            f"{escape(f.message)}{also}",
            highlight=False,
        )
    if not c.findings:
        out.print("[green]no findings[/]")
    if c.transcripts:
        t = c.transcripts
        colour = "green" if t["same"] else "bold red"
        out.print(f"transcript A: {escape(t['a'])}\ntranscript B: {escape(t['b'])}", highlight=False)
        out.print(
            f"[{colour}]transcripts {'identical' if t['same'] else 'differ'}: WER {t['wer']:.1%}, CER {t['cer']:.1%}[/]"
            f" [dim]({cap_note(t.get('max_tokens'))})[/]",
            highlight=False,
        )


def _next_step(c, html) -> None:
    """The command worth running next, as the last line."""
    a, b = _quote(c.a), _quote(c.b)
    steps = []
    if c.first_divergence is not None:
        if html is None:
            steps.append(f"whisperdiff report {a} {b}   (the page with plots)")
        steps.append(f"whisperdiff patch {a} {b}   (which op causes it, and does the text change)")
    else:
        if not c.transcripts and "ln_post" in c.views:
            steps.append(f"whisperdiff compare {a} {b} --transcribe   (do the texts agree too?)")
        steps.append(f"whisperdiff check {a} {b} --tolerances float32   (gate it in CI)")
    out.print("next: " + "\n      ".join(steps), highlight=False, markup=False)


def _quote(path) -> str:
    import shlex

    return shlex.quote(str(path))


@app.command()
def faults():
    """The injectable porting bugs (`trace --inject NAME`) and the op where each first shows."""
    from whisperdiff.capture.faults import DECODER_FAULTS, FAULTS

    table = Table()
    for col in ("fault", "first shows at", "what it does", "acts"):
        table.add_column(col)
    for f in FAULTS.values():
        table.add_row(
            f.name,
            f.first_op_for(4),  # named for tiny's 4 blocks; the manifest of a trace names it for that model
            f.description,
            "input (any --impl)" if f.mel else "MAX encoder (run-time switch)",
        )
    for f in DECODER_FAULTS.values():  # `trace-decoder --impl max --inject NAME`
        position = "the first cached step" if f.first_position == "prompt" else f"position {f.first_position}"
        table.add_row(f.name, f"{f.first_op_for(4)}, {position}", f.description, "MAX decoder (run-time switch)")
    out.print(table)


@app.command()
def models():
    """Models that load offline right now (whisperdiff never downloads)."""
    from whisperdiff.inputs.models import available_models

    table = Table()
    table.add_column("model spec")
    table.add_column("where")
    for spec, where in available_models():
        table.add_row(spec, where)
    out.print(table)


@app.command()
def ops(
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list: name, shape, layout, optional.")] = False,
    decoder: Annotated[
        bool, typer.Option("--decoder", help="The decoder's ops (P: token positions; shown for P=1).")
    ] = False,
):
    """The canonical op names for a model, in encoder order, with shape and layout."""
    from whisperdiff.inputs.models import load_model
    from whisperdiff.names import decoder_op_specs, op_specs

    dims = load_model(model).dims
    specs = decoder_op_specs(dims, 1) if decoder else op_specs(dims)
    if as_json:
        print(
            json.dumps(
                [{"name": s.name, "shape": list(s.shape), "layout": s.layout, "optional": s.optional} for s in specs],
                indent=1,
            )
        )
        return
    table = Table()
    for col in ("op", "shape", "layout", "optional"):
        table.add_column(col)
    for s in specs:
        table.add_row(s.name, "x".join(map(str, s.shape)), s.layout, "yes" if s.optional else "")
    out.print(table)


def _print_decoder_summary(d: dict) -> None:
    from rich.markup import escape

    if d.get("warning"):
        out.print(f"[bold red]{escape(d['warning'])}[/]", highlight=False)
    first = d.get("first_divergence")
    if first:
        out.print(
            f"[bold red]decoder: first divergence at {escape(first['op'])}, {first['axis']} {first['position']}[/]",
            highlight=False,
        )
    logits = d.get("logits")
    if logits:
        out.print(
            f"logits: top-1 agreement {logits['top1_agreement']:.1%}, KL(A||B) max {logits['max_kl']:.3g} "
            f"mean {logits['mean_kl']:.3g}",
            highlight=False,
        )
        ch = logits.get("first_argmax_change")
        if ch:
            out.print(
                f"[bold red]argmax first changes at position {ch['position']}[/]: A token {ch['a_token']} "
                f"{escape(repr(ch.get('a_text')))} (p={ch['a_prob']:.3f}; B gives it {ch['b_prob_of_a_token']:.3f}), "
                f"B token {ch['b_token']} {escape(repr(ch.get('b_text')))} "
                f"(p={ch['b_prob']:.3f}; A gives it {ch['a_prob_of_b_token']:.3f})",
                highlight=False,
            )
        else:
            out.print("[green]argmax agrees at every position[/]", highlight=False)


@app.command("trace-decoder")
def trace_decoder_command(
    impl: Annotated[
        str,
        typer.Option(
            metavar="<torch|max>", help="Decoder: torch (openai-whisper's TextDecoder, hooked) or max (MAX Graph)."
        ),
    ] = "torch",
    model: ModelOpt = None,
    audio: Annotated[
        Path | None, typer.Option(help="Audio file (first 30 s window). Default: the shipped clip.")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Trace directory.")] = None,
    tokens: Annotated[
        str | None,
        typer.Option(
            metavar="IDS",
            help="Comma-separated text token ids to force. Default: openai-whisper's "
            "greedy tokens on the same encoder output.",
        ),
    ] = None,
    tokens_from: Annotated[
        Path | None, typer.Option("--tokens-from", help="Force the tokens of this decoder trace.")
    ] = None,
    encoder: Annotated[
        str, typer.Option(metavar="<torch|max>", help="Whose encoder output the decoder attends to: torch or max.")
    ] = "torch",
    encoder_inject: Annotated[
        list[str] | None,
        typer.Option("--encoder-inject", metavar="FAULT", help="Encoder bug in --encoder (repeatable)."),
    ] = None,
    inject: Annotated[
        list[str] | None, typer.Option(metavar="FAULT", help="Decoder bug (MAX; repeatable): `whisperdiff faults`.")
    ] = None,
    taps: Annotated[
        str,
        typer.Option(
            metavar="<default|all|output|GLOBS>",
            help="default, all, output (logits) or names/globs (`whisperdiff ops --decoder`).",
        ),
    ] = "default",
    full: Annotated[
        bool, typer.Option("--full", help="One full-sequence step instead of the KV cache, token by token.")
    ] = False,
):
    """Teacher-force a decoder on one token sequence, position by position, and save every decoder op."""
    from whisperdiff.capture.decoder import trace_decoder
    from whisperdiff.store.trace import load_trace

    forced = None
    if tokens is not None and tokens_from is not None:
        raise WhisperdiffError("give --tokens or --tokens-from, not both")
    if tokens is not None:
        try:
            forced = [int(t) for t in tokens.split(",") if t.strip()]
        except ValueError:
            raise WhisperdiffError(f"--tokens {tokens!r}: give comma-separated integer token ids") from None
    if tokens_from is not None:
        forced = load_trace(tokens_from).manifest.get("decoder", {}).get("tokens")
        if not forced:
            raise WhisperdiffError(
                f"{tokens_from} is not a decoder trace (no tokens in its manifest); use `trace-decoder`"
            )
    result = trace_decoder(
        impl,
        model=model,
        audio=audio,
        out=out_dir,
        tokens=forced,
        encoder=encoder,
        taps=taps,
        inject=inject,
        encoder_inject=encoder_inject,
        incremental=not full,
    )
    d = result.manifest["decoder"]
    forced_next = d["tokens"][1:]
    agree = sum(a == t for a, t in zip(d["argmax"], forced_next, strict=False))
    out.print(
        f"[bold]{result.path}[/]  {impl} decoder, {len(result.ops)} ops, {len(d['tokens'])} positions "
        f"({d['mode']}, {d['steps']} steps)",
        highlight=False,
    )
    out.print(f"tokens: {d['tokens']}  [dim]({escape_markup(d['token_source'])})[/]", highlight=False)
    out.print(
        f"own argmax = next forced token at {agree} of {len(forced_next)} positions; smallest logit margin "
        f"{min(d['margin'][:-1] or d['margin']):.3g}",
        highlight=False,
    )


@app.command("crossfeed")
def crossfeed_command(
    model: ModelOpt = None,
    audio: Annotated[
        Path | None, typer.Option(help="Audio file (first 30 s window). Default: the shipped clip.")
    ] = None,
    encoder: Annotated[str, typer.Option(metavar="<max|torch>", help="The candidate encoder: max or torch.")] = "max",
    decoder: Annotated[str, typer.Option(metavar="<max|torch>", help="The candidate decoder: max or torch.")] = "max",
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
        print(json.dumps(result.to_json(), indent=1))
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


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _terminate(signum, frame):
    from whisperdiff.store import trace as store

    if store.writing():
        raise KeyboardInterrupt  # unwinds through TraceWriter, which removes its partial directory
    # Nothing is being written: end now, without unwinding through half-imported native modules
    # (an exception raised inside torch's import can abort the process with a long stack).
    try:
        sys.stderr.write(_interrupted() + "\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _interrupted() -> str:
    from whisperdiff.store.trace import COMMITTED

    if COMMITTED:
        return f"interrupted: wrote {printable(', '.join(map(str, COMMITTED)))} before the interrupt; nothing else was written"
    return "interrupted: nothing was written (an existing trace at --out is left as it was)"


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    debug = os.environ.get("WHISPERDIFF_DEBUG") == "1"
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    try:
        # Not standalone: errors come to us as exceptions; exits come back as a code (typer turns
        # KeyboardInterrupt, i.e. Ctrl-C or SIGTERM via _terminate, into code 130).
        code = app(standalone_mode=False)
        if code == 130:
            err.print(_interrupted(), highlight=False, markup=False, soft_wrap=True)
        sys.exit(code if isinstance(code, int) else 0)
    except WhisperdiffError as e:
        if debug:
            raise
        err.print(f"error: {_one_line(e)}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors from the (vendored) click parser
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        err.print(
            f"error: {_one_line(message)} (see `whisperdiff --help`)", highlight=False, markup=False, soft_wrap=True
        )
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort) as e:
        if isinstance(e.__cause__, EOFError):  # click turns EOFError (a file that ends early) into Abort
            err.print(
                f"error: a file ended before its data did (truncated or empty): {_one_line(e.__cause__) or 'EOF'}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            sys.exit(2)
        err.print(_interrupted(), highlight=False, markup=False, soft_wrap=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # a file or directory the user named: permissions, a full disk, a FIFO, ...
        if debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        err.print(f"error: {e.strerror or _one_line(e)}{where}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except Exception as e:
        if debug:
            raise
        err.print(
            f"error: internal error ({type(e).__name__}: {_one_line(e)}); rerun with WHISPERDIFF_DEBUG=1 for the traceback "
            "and please report it",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        sys.exit(3)


if __name__ == "__main__":
    main()
