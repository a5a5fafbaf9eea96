"""Commands beyond one clip: sweep (a port over a corpus, in process or on Ray), sweep-report, corpus make."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from whisperdiff.errors import WhisperdiffError
from whisperdiff.present.cli.app import app, err, escape_markup, out
from whisperdiff.present.cli.options import parse_dtypes
from whisperdiff.present.cli.progress import progress

corpus_app = typer.Typer(no_args_is_help=True, help="Build a corpus of clips to sweep a port over.")
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("make")
def corpus_make(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Folder to write the clips into.")],
    *,
    kinds: Annotated[
        list[str] | None,
        typer.Option(
            "--kind", metavar="KIND", help="Only these kinds: speech, short, loud, quiet, silence, noise, music, long."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(metavar="N", help="At most this many clips.")] = None,
):
    """A varied test set, offline: espeak-ng speech in several voices, speeds and pitches; silence, noise,
    music-like tones; very short, loud and clipped, and multi-window clips (16 kHz WAV + corpus.json)."""
    from whisperdiff.inputs.corpus import make_corpus

    t0 = time.perf_counter()
    paths = make_corpus(directory, limit=limit, kinds=kinds)
    out.print(f"wrote {len(paths)} clips to {escape_markup(str(directory))}  ({time.perf_counter() - t0:.1f} s)")


@app.command()
def sweep(
    *,
    corpus: Annotated[Path, typer.Option(metavar="DIR|LIST", help="A folder of audio or a list file of paths.")],
    output: Annotated[Path, typer.Option("-o", "--out", metavar="OUT", help="Where records (and kept traces) go.")],
    a: Annotated[str, typer.Option("--a", metavar="IMPL", help="The reference: any --impl.")] = "torch",
    b: Annotated[
        str, typer.Option("--b", metavar="IMPL", help="The candidate: any --impl (a port's factory too).")
    ] = "max",
    models: Annotated[
        list[str] | None, typer.Option("--model", metavar="M", help="Models (repeat for several).")
    ] = None,
    dtypes: Annotated[
        list[str] | None,
        typer.Option("--dtype", metavar="DTYPE", callback=parse_dtypes, help="The candidate's dtypes (repeat)."),
    ] = None,
    devices: Annotated[
        list[str] | None, typer.Option("--device", metavar="DEVICE", help="Devices: cpu, gpu (repeat).")
    ] = None,
    inject: Annotated[
        list[str] | None,
        typer.Option(
            metavar="FAULT",
            help="Porting bugs planted in the candidate, one variant each (repeat; `none`: the clean port).",
        ),
    ] = None,
    configs: Annotated[
        list[str] | None,
        typer.Option(
            "--config", metavar="[MODEL/]DTYPE[/DEVICE][+FAULT]", help="Explicit configs instead of the product."
        ),
    ] = None,
    keep: Annotated[
        str, typer.Option(metavar="divergent|all|none", help="Full traces kept: divergent, all or none.")
    ] = "divergent",
    transcribe: Annotated[bool, typer.Option(help="Decode both sides of each job: transcripts and WER.")] = True,
    taps: Annotated[
        str, typer.Option(metavar="default|all|output|GLOBS", help="Ops traced (fewer: less to write per job).")
    ] = "default",
    ray: Annotated[bool, typer.Option("--ray", help="Run on Ray: a local Ray started for the sweep.")] = False,
    address: Annotated[
        str | None, typer.Option(metavar="ADDRESS", help="With --ray: an existing cluster (default: RAY_ADDRESS).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="Ray workers (default: one per CPU, or per GPU).")
    ] = None,
    retry_errors: Annotated[bool, typer.Option(help="Run again the jobs recorded as errors.")] = False,
    report: Annotated[bool, typer.Option(help="Write OUT/report.html when done.")] = True,
):
    """A reference and a candidate over a corpus, one job per (clip window, config); resumable: a rerun
    skips what is done. Config = model x dtype x device (x --inject variant)."""
    from whisperdiff.experiments.sweep import Config, SweepSpec, run_sweep

    if configs:
        plan = [Config.parse(c) for c in configs]
    else:
        variants = [() if f in ("none", "") else tuple(f.split("+")) for f in (inject or ["none"])]
        plan = [
            Config(m, d, dev, v)
            for m in models or ["default"]
            for d in dtypes or ["float32"]
            for dev in devices or ["cpu"]
            for v in variants
        ]
    spec = SweepSpec(out=output, a=a, b=b, keep=keep, transcribe=transcribe, taps=taps)
    engine = "process"
    if address and not ray:
        raise WhisperdiffError("--address is for --ray; add --ray (or unset the address)")
    if ray:
        from whisperdiff.experiments.sweep_ray import RayEngine

        engine = RayEngine(spec, address=address, workers=workers, gpu=any(c.needs_gpu for c in plan))
    with progress("sweep", eta=True, log=True) as bar:
        result = run_sweep(
            spec,
            corpus,
            plan,
            engine=engine,
            retry_errors=retry_errors,
            on_total=bar.on_total,
            on_op=bar.on_op,
            on_status=bar.on_status,
        )
    frame = result.records
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    out.print(
        f"{escape_markup(str(output))}: {len(frame)} jobs ({result.ran} run now, {result.skipped} done before), "
        f"{counts.get('pass', 0)} within tolerance, {counts.get('diverged', 0)} diverged, {counts.get('error', 0)} failed "
        f"({result.seconds:.0f} s, {result.engine})",
        highlight=False,
    )
    for line in result.errors[:5]:
        err.print(f"  failed: {escape_markup(line)}", highlight=False)
    if report:
        from whisperdiff.present.corpus_report import write_corpus_report

        out.print(f"wrote {escape_markup(str(write_corpus_report(output)))}", highlight=False)


@app.command("sweep-report")
def sweep_report(
    sweep_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sweep's output folder.")],
    *,
    output: Annotated[Path | None, typer.Option("-o", "--out", help="The HTML file (default OUT/report.html).")] = None,
    job_reports: Annotated[int, typer.Option(metavar="N", help="Reports for the worst kept diverging jobs.")] = 12,
    screenshot: Annotated[Path | None, typer.Option(metavar="F.png", help="Also a screenshot (Chromium).")] = None,
):
    """The sweep as one self-contained HTML page: divergence by clip property, errors per op, ranked clips, WER."""
    from whisperdiff.present.corpus_report import write_corpus_report

    path = write_corpus_report(sweep_dir, output, job_reports=job_reports)
    out.print(f"wrote {escape_markup(str(path))}", highlight=False)
    if screenshot is not None:
        from whisperdiff.present.browser import Browser

        with Browser() as browser:
            page = browser.open(path, screenshot=screenshot)
        out.print(
            f"wrote {escape_markup(str(screenshot))}  ({len(page.broken_images)} broken figures)", highlight=False
        )
