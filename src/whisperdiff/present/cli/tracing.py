"""Commands that run an implementation and save a trace: trace, transcribe, trace-decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whisperdiff.errors import WhisperdiffError
from whisperdiff.present.cli.app import app, err, escape_markup, out, print_json, size
from whisperdiff.present.cli.options import AudioOpt, EncoderRun, ModelOpt, with_groups
from whisperdiff.present.cli.progress import progress


@app.command()
@with_groups
def trace(
    *,
    run: EncoderRun,
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
    with progress(f"tracing {run.impl}", status="loading model", quiet=as_json) as bar:
        session = run.session(on_status=bar.on_status)
        bar.on_total(len(session.tap_names))  # mel is one of the taps
        bar.on_status("")
        if window == "all" and mel is None:
            results = session.trace_windows(audio=audio, out=out_dir, transcribe=transcribe)
        else:
            window = "0" if window == "all" else window  # a --mel file is one window
            if not window.isdigit():
                raise WhisperdiffError(f"--window {window!r}: give a window number (0, 1, ...) or all")
            results = [
                session.trace(
                    audio=audio, mel=mel, out=out_dir, window=int(window), transcribe=transcribe, on_op=bar.on_op
                )
            ]
    if as_json:
        summaries = [_trace_summary(r) for r in results]
        print_json(summaries[0] if len(summaries) == 1 else summaries)
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
        f"[green]wrote[/] {result.path}  ({len(result)} ops, {size(result.nbytes)}, {m['run']['total_seconds']:.1f} s{graph})"
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
        streamed = ", streamed block by block" if runner.get("streamed") else ""
        compiled = f"  [dim]graph {'loaded from cache' if runner['compile_cache_hit'] else 'compiled'} in {runner['compile_seconds']:.1f} s{streamed}[/]"
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
@with_groups
def transcribe(
    *,
    run: EncoderRun,
    audio: Annotated[
        Path | None, typer.Option(help="Audio file; every 30 s window is encoded. Default: the shipped clip.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Trace directory (OUT.wN per window for long audio).")
    ] = None,
    decoder: Annotated[
        str | None,
        typer.Option(
            metavar="<torch|max|FILE.py:FACTORY>",
            help="Decoder: torch (openai-whisper), max (the MAX decoder graph) or your own (module:factory, "
            "file.py:factory; capture/plugin.py). Default: max with --impl max (MAX for both halves), else torch.",
        ),
    ] = None,
):
    """Encode every window with the chosen encoder, decode (openai-whisper's greedy search), print the text.

    Each window is traced like `trace` and its transcript stored in the trace's manifest."""
    with progress("transcribing", status="loading model") as bar:
        session = run.session(on_status=bar.on_status)
        session.decoder_impl = decoder or ("max" if run.impl == "max" else "torch")
        if session.decoder_impl not in ("torch", "max") and ":" not in session.decoder_impl:
            raise WhisperdiffError(f"unknown --decoder {decoder!r}; use torch, max, module:factory or file.py:factory")
        results = session.trace_windows(
            audio=audio, out=out_dir, transcribe=True, on_op=bar.on_op, on_total=bar.on_total, on_status=bar.on_status
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


@app.command("trace-decoder")
def trace_decoder_command(
    impl: Annotated[
        str,
        typer.Option(
            metavar="<torch|max|FILE.py:FACTORY>",
            help="Decoder: torch (openai-whisper's TextDecoder, hooked), max (MAX Graph) or your own "
            "(module:factory, file.py:factory: start(features), step(tokens, record) -> logits; capture/plugin.py).",
        ),
    ] = "torch",
    model: ModelOpt = None,
    audio: AudioOpt = None,
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
    mark_all: Annotated[
        bool,
        typer.Option(
            "--mark-all",
            help="Hands-off: capture every torch op your decoder port (--impl FILE.py:FACTORY) runs and align "
            "it to the canonical ops step by step, by value against the --tokens-from trace, else by structure.",
        ),
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
        mark_all=mark_all,
        reference=tokens_from if mark_all else None,
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
    capture = (result.manifest.get("runner") or {}).get("capture")
    if capture:
        out.print(escape_markup(capture["summary"]), highlight=False)
        if capture["unmatched"]:
            out.print(f"not aligned: {escape_markup(', '.join(capture['unmatched']))}", highlight=False)
    out.print(
        f"own argmax = next forced token at {agree} of {len(forced_next)} positions; smallest logit margin "
        f"{min((m for m in d['margin'][:-1] or d['margin'] if m is not None), default=float('nan')):.3g}",
        highlight=False,
    )
