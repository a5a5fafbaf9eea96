"""Commands for pass or fail: check, tolerances (propose a tolerance file), golden save."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whisperdiff.errors import WhisperdiffError
from whisperdiff.present.cli.app import app, err, escape_markup, out, print_json, size, write_atomic
from whisperdiff.present.cli.options import CheckFileOpt, OutputAlias, Pairing, with_groups
from whisperdiff.present.cli.progress import progress


@app.command()
@with_groups
def check(
    traces: Annotated[
        list[Path], typer.Argument(metavar="[A] B", help="Reference and candidate traces (only B with --golden).")
    ],
    *,
    tolerances: CheckFileOpt = None,
    golden: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Check B against this golden set instead of a reference trace.")
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Also write JUnit XML here: one test case per op.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object, schema whisperdiff.check (docs/json.md).")
    ] = False,
    pairing: Pairing,
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
        result = run_check(
            traces[0],
            traces[1],
            tol,
            rename=pairing.rename,
            model=pairing.model,
            replay=pairing.replay,
            force=pairing.force,
        )
    if junit is not None:
        write_atomic(junit, junit_xml(result))
    if as_json:
        print_json(result.to_json())
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
    from whisperdiff.experiments.calibrate import calibrate

    output = output or output_alias
    with progress("float64 re-run", quiet=other is not None) as bar:
        calibration = calibrate(reference, against=other, factor=factor, on_op=bar.on_op, on_total=bar.on_total)
    text = calibration.to_toml()
    if output is None:
        print(text, end="")
    else:
        write_atomic(output, text)
        err.print(f"wrote {output} ({len(calibration.tolerances.rules)} rules)", highlight=False)


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
    total = sum(f.stat().st_size for f in path.iterdir())
    out.print(f"wrote {path}  ({size(total)}, {samples} samples per op)", highlight=False)
