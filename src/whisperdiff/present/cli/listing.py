"""Commands that look things up without running a model: ls, show, faults, models, ops."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from whisperdiff.errors import WhisperdiffError
from whisperdiff.present.cli.app import app, escape_markup, fmt, out, print_json, size
from whisperdiff.present.cli.options import ModelOpt


def _listing_table(listings) -> Table:
    table = Table(title=None, show_lines=False)
    for col in ("trace", "status", "impl", "model", "input", "ops", "size", "created"):
        table.add_column(col, justify="right" if col in ("ops", "size") else "left")
    for item in listings:
        row = item.row()
        status = item.shown_status  # "complete (not verified)" unless --verify hashed every tensor
        style = "green" if row["status"] == "complete" else "red"
        table.add_row(  # every cell from a manifest is escaped: a trace's text is never markup
            escape_markup(row["trace"]),
            f"[{style}]{escape_markup(status)}[/]",
            escape_markup(str(row["impl"] or "-")),
            escape_markup(str(row["model"] or "-")),
            escape_markup(str(row["input"] or "-")),
            str(row["ops"]) if row["ops"] is not None else "-",
            size(row["bytes"]),
            escape_markup(str(row["created"] or "-")),
        )
    return table


@app.command("ls")
def ls(
    directory: Annotated[Path, typer.Argument(help="Folder holding traces (searched with its subfolders).")] = Path(
        "traces"
    ),
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object, schema whisperdiff.ls (docs/json.md).")
    ] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Hash every tensor (reads every byte): a flipped bit shows as damaged.")
    ] = False,
):
    """List traces with impl, model, input, op count, size; incomplete or damaged ones are marked.
    Without --verify the tensors' digests are not checked, and complete traces say "not verified"."""
    listings = _find_traces(directory, verify=verify)
    if not listings:
        raise WhisperdiffError(f"no traces in {directory}; make one with `whisperdiff trace`")
    if as_json:
        from whisperdiff.store.documents import ls_document

        print_json(ls_document(listings))
    else:
        out.print(_listing_table(listings))


def _find_traces(directory: Path, depth: int = 4, verify: bool = False) -> list:
    """list_traces of `directory` and of its subfolders that are not traces (a few levels deep)."""
    from whisperdiff.store.trace import MANIFEST, list_traces

    listings = list_traces(directory, verify=verify)
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
        listings += _find_traces(sub, depth - 1, verify)
    return listings


@app.command()
def show(
    trace_dir: Annotated[Path, typer.Argument(metavar="TRACE", help="A trace directory.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Manifest and per-op statistics: schema whisperdiff.show (docs/json.md).")
    ] = False,
):
    """Per-op statistics of one trace: shape, dtype, mean, std, min, max, NaN/Inf counts."""
    from whisperdiff.store.trace import load_trace

    t = load_trace(trace_dir)
    if as_json:
        from whisperdiff.store.documents import show_document

        print_json(show_document(t))
        return
    df = t.summary()
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
            fmt(row.mean),
            fmt(row.std),
            fmt(row.min),
            fmt(row.max),
            f"[red]{row.nan}[/]" if row.nan else "0",
            f"[red]{row.inf}[/]" if row.inf else "0",
            style="red" if bad else None,
        )
    out.print(table)


@app.command()
def faults():
    """The injectable porting bugs (`trace --inject NAME`) and the op where each first shows."""
    from whisperdiff.capture.faults import DECODER_FAULTS, FAULTS, INPUT_FAULTS

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
    for f in INPUT_FAULTS.values():  # invisible on one ordinary clip: `sweep --inject NAME` finds them
        table.add_row(f.name, f.first_op, f.description, f"input, only where {f.depends_on} is extreme (sweep)")
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
        print_json(
            [{"name": s.name, "shape": list(s.shape), "layout": s.layout, "optional": s.optional} for s in specs]
        )
        return
    table = Table()
    for col in ("op", "shape", "layout", "optional"):
        table.add_column(col)
    for s in specs:
        table.add_row(s.name, "x".join(map(str, s.shape)), s.layout, "yes" if s.optional else "")
    out.print(table)
