"""Score whisperdiff's hands-off decoder alignment on planted bugs: benchmarks/handsoff_decoder_ports.py
(`--ports hf`, transformers' WhisperDecoder, WD_HF_DECODER_BUG) or benchmarks/max_decoder_ports.py (`--ports max`,
a MAX Graph decoder class from raw ops with its own KV cache, WD_MAX_DECODER_BUG), both written apart from the
alignment code.

For each variant (clean or with one porting bug, chosen by the set's environment variable):

    WD_HF_DECODER_BUG=NAME whisperdiff trace-decoder --impl benchmarks/handsoff_decoder_ports.py:make \\
        --mark-all --tokens-from REF -o traces/handsoff-decoder/NAME
    whisperdiff compare REF traces/handsoff-decoder/NAME --json  > traces/handsoff-decoder/NAME.json
    whisperdiff check REF traces/handsoff-decoder/NAME --tolerances float32       (its exit code)

REF (traces/handsoff-decoder/ref, `--ref`) is openai-whisper's decoder (`trace-decoder --impl torch`), traced
first when missing. The port never calls `record`: every op but its logits has to be found by whisperdiff.

Per case:
- verdict: clean variants right when compare finds no first divergence and check exits 0; bugs right when
  compare's decoder first divergence is the declared op (or one of its alternates), at the declared token
  position when one is declared, and check exits non-zero;
- false findings: findings not of severity "info" at ops before the expected one (canonical decoder order);
  for a clean variant every non-info finding;
- aligned: the trace manifest's `runner.capture.summary` (and `runner.capture.unmatched`), "-" when absent.

    python benchmarks/handsoff_decoder.py                                 # every variant, one at a time
    python benchmarks/handsoff_decoder.py --bugs clean,cache-k-stale --json reports/handsoff_decoder.json
    python benchmarks/handsoff_decoder.py --ports max                     # each variant a MAX compile (1-3 min)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# --ports NAME: (the module of variants, the environment variable that picks one, the traces' folder, what it is)
PORT_SETS = {
    "hf": ("handsoff_decoder_ports", "WD_HF_DECODER_BUG", "handsoff-decoder", "transformers' WhisperDecoder"),
    "max": ("max_decoder_ports", "WD_MAX_DECODER_BUG", "handsoff-max-decoder", "a MAX Graph decoder class"),
}
REF = ROOT / "traces" / "handsoff-decoder" / "ref"
BUGS: dict = {}
PORTS, VARIABLE, OUT, TITLE = None, None, None, None


def use_ports(name: str) -> None:
    """Score the variants of PORT_SETS[name]."""
    global BUGS, PORTS, VARIABLE, OUT, TITLE
    module, VARIABLE, folder, TITLE = PORT_SETS[name]
    BUGS = importlib.import_module(module).BUGS
    PORTS, OUT = HERE / f"{module}.py", ROOT / "traces" / folder


class FlagRejected(Exception):
    """trace-decoder does not take --mark-all (yet)."""


def whisperdiff_exe() -> str:
    return shutil.which("whisperdiff") or str(Path(sys.executable).with_name("whisperdiff"))


def _first_line(proc: subprocess.CompletedProcess) -> str:
    text = "\n".join(x for x in (proc.stderr, proc.stdout) if x and x.strip())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rror" in ln or "No such option" in ln]
    return ((errors or lines or [f"exit {proc.returncode}"])[-1])[:300]


def reference(ref: Path) -> Path:
    if not (ref / "manifest.json").is_file():
        ref.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [whisperdiff_exe(), "trace-decoder", "--impl", "torch", "-o", str(ref)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise SystemExit(f"error: tracing the reference failed: {_first_line(proc)}")
    return ref


def decoder_op_order(ref: Path) -> list[str]:
    from whisperdiff.names import decoder_op_specs

    dims = json.loads((ref / "manifest.json").read_text())["model"]["dims"]
    return [s.name for s in decoder_op_specs(dims, n_tokens=1)]


# ------------------------------------------------------------------------------------------------
# one case
# ------------------------------------------------------------------------------------------------


def trace(bug: str, ref: Path, out: Path, reuse: bool = False) -> tuple[float, str | None]:
    """Trace one variant hands-off; (seconds, error or None). Raises FlagRejected when --mark-all is unknown."""
    if reuse and (out / "manifest.json").is_file():
        return 0.0, None
    shutil.rmtree(out, ignore_errors=True)
    impl = f"{PORTS.relative_to(ROOT) if PORTS.is_relative_to(ROOT) else PORTS}:make"
    cmd = [whisperdiff_exe(), "trace-decoder", "--impl", impl, "--mark-all", "--tokens-from", str(ref), "-o", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, **{VARIABLE: bug}))
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        text = f"{proc.stderr}\n{proc.stdout}"
        if proc.returncode == 2 and re.search(
            r"(no such option|unrecognized|unexpected).{0,40}mark-all", text, re.I | re.S
        ):
            raise FlagRejected(_first_line(proc))
        return secs, f"trace-decoder exit {proc.returncode}: {_first_line(proc)}"
    return secs, None


def capture_summary(out: Path) -> tuple[str | None, object]:
    try:
        runner = json.loads((out / "manifest.json").read_text()).get("runner") or {}
    except (OSError, ValueError):
        return None, None
    capture = runner.get("capture") if isinstance(runner, dict) else None
    if not isinstance(capture, dict):
        return None, None
    summary = capture.get("summary")
    return (summary if isinstance(summary, str) else json.dumps(summary) if summary is not None else None), capture.get(
        "unmatched"
    )


def run_case(bug: str, ref: Path, order: list[str], tolerances: str = "float32", reuse: bool = False) -> dict:
    spec = BUGS[bug]
    out = OUT / bug
    row: dict = {
        "bug": bug,
        "expected": spec["op"],
        "position": spec["position"],
        "alternates": list(spec.get("alternates") or []),
        "what": spec.get("what"),
        "error": None,
    }
    row["trace_s"], row["error"] = trace(bug, ref, out, reuse)
    row["trace_s"] = round(row["trace_s"], 1)
    if row["error"]:
        return score(row, order)
    summary, unmatched = capture_summary(out)
    row["capture_summary"], row["unmatched"] = summary, unmatched
    m = re.search(r"(\d+)\s*/\s*(\d+)", summary or "")
    row["aligned"], row["alignable"] = (int(m[1]), int(m[2])) if m else (None, None)

    exe = whisperdiff_exe()
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "compare", str(ref), str(out), "--json"], capture_output=True, text=True, cwd=ROOT)
    row["compare_s"] = round(time.perf_counter() - t0, 1)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        row["error"] = f"compare exit {proc.returncode}: {_first_line(proc)}"
        return score(row, order)
    Path(f"{out}.json").write_text(proc.stdout)
    if (doc.get("schema"), doc.get("schema_version")) != ("whisperdiff.compare", 2):
        row["note"] = f"compare schema {doc.get('schema')} v{doc.get('schema_version')} (written for v2)"
    dec = doc.get("decoder") or {}
    first = dec.get("first_divergence") or {}
    row["first_divergence"] = doc.get("first_divergence")
    row["first_op"], row["first_position"] = first.get("op"), first.get("position")
    row["top1_agreement"] = (dec.get("logits") or {}).get("top1_agreement")
    row["findings"] = [
        {k: f.get(k) for k in ("kind", "op", "severity", "confidence", "message")} for f in doc.get("findings") or []
    ]
    row["not_aligned"] = [o["op"] for o in doc.get("ops") or [] if o.get("status") in ("not_aligned", "not_traced")]

    t0 = time.perf_counter()
    proc = subprocess.run(
        [exe, "check", str(ref), str(out), "--tolerances", tolerances], capture_output=True, text=True, cwd=ROOT
    )
    row["check_s"] = round(time.perf_counter() - t0, 1)
    row["check_rc"] = proc.returncode
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    row["check_line"] = (lines or [_first_line(proc)])[0][:200]
    return score(row, order)


def score(row: dict, order: list[str]) -> dict:
    index = {op: i for i, op in enumerate(order)}
    if row.get("error") and "findings" not in row:
        row.update(verdict_ok=False, false_findings=None, top=row["error"])
        return row
    findings = [f for f in row.get("findings") or [] if f.get("severity") != "info"]
    rc = row.get("check_rc")
    if row["expected"] is None:
        row["verdict_ok"] = not row.get("first_op") and not row.get("first_divergence") and rc == 0
        row["false_findings"] = len(findings)
    else:
        at_op = row.get("first_op") in (row["expected"], *row["alternates"])
        at_position = row["position"] is None or row.get("first_position") == row["position"]
        row["verdict_ok"] = bool(at_op and at_position and rc not in (0, None))
        limit = index.get(row["expected"], len(order))
        row["false_findings"] = sum(1 for f in findings if f.get("op") in index and index[f["op"]] < limit)
    top = findings[0] if findings else None
    row["top"] = f"{top['kind']} @ {top['op']}: {top['message']}" if top else "(no finding)"
    return row


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------


def _where(op, position) -> str:
    if op is None:
        return "-"
    return f"{op.removeprefix('decoder.')}@{'*' if position is None else position}"


def print_table(rows: list[dict], width: int = 100) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        Console = None
    cols = ("variant", "expected", "aligned", "first div.", "verdict", "check", "false", "top finding", "s")
    cells = []
    for r in rows:
        aligned = f"{r['aligned']}/{r['alignable']}" if r.get("aligned") is not None else "-"
        secs = sum(r.get(k) or 0 for k in ("trace_s", "compare_s", "check_s"))
        cells.append(
            (
                r["bug"],
                "(clean)" if r["expected"] is None else _where(r["expected"], r["position"]),
                aligned,
                "-" if r.get("error") and "findings" not in r else _where(r.get("first_op"), r.get("first_position")),
                "right" if r.get("verdict_ok") else "WRONG",
                str(r.get("check_rc", "-")),
                "-" if r.get("false_findings") is None else str(r["false_findings"]),
                (r.get("top") or "")[:width],
                f"{secs:.0f}",
            )
        )
    n = len(rows)
    right = sum(bool(r.get("verdict_ok")) for r in rows)
    false = sum(r.get("false_findings") or 0 for r in rows)
    errors = sum(bool(r.get("error")) for r in rows)
    full = sum(1 for r in rows if r.get("aligned") is not None and r["aligned"] == r["alignable"])
    bugs = [r for r in rows if r["expected"] is not None]
    cleans = [r for r in rows if r["expected"] is None]
    totals = (
        f"totals: {n} cases, verdict right {right}/{n} (bugs {sum(bool(r.get('verdict_ok')) for r in bugs)}/"
        f"{len(bugs)}, clean {sum(bool(r.get('verdict_ok')) for r in cleans)}/{len(cleans)}), "
        f"false findings {false}, fully aligned {full}/{n}, errors {errors}"
    )
    if Console is None:
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        for row in cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        print(totals)
    else:
        table = Table(title=f"whisperdiff hands-off decoder ({TITLE}, planted bugs)", show_lines=True)
        for c in cols:
            table.add_column(c, overflow="fold")
        for row in cells:
            verdict = "[green]right[/]" if row[4] == "right" else "[red]WRONG[/]"
            table.add_row(*row[:4], verdict, *row[5:])
        console = Console(width=max(200, Console().width))
        console.print(table)
        console.print(totals)
    for r in rows:
        if r.get("error"):
            print(f"{r['bug']}: {r['error']}")
        if r.get("note"):
            print(f"{r['bug']}: {r['note']}")
        unmatched = r.get("unmatched")
        if unmatched:
            if isinstance(unmatched, (list, tuple)):
                more = f", ... ({len(unmatched)} in all)" if len(unmatched) > 6 else ""
                unmatched = ", ".join(map(str, unmatched[:6])) + more
            print(f"{r['bug']}: unmatched: {str(unmatched)[:400]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", default="hf", choices=list(PORT_SETS), help="which set of ports (default hf)")
    parser.add_argument("--bugs", default=None, help="variants, comma-separated (default all)")
    parser.add_argument("--ref", default=str(REF), help="reference decoder trace (traced with --impl torch if missing)")
    parser.add_argument("--tolerances", default="float32", help="for `whisperdiff check` (default float32)")
    parser.add_argument("--reuse", action="store_true", help="score traces already there (traces/handsoff-*)")
    parser.add_argument("--json", default=None, help="write every row (findings included) here")
    args = parser.parse_args(argv)
    use_ports(args.ports)

    bugs = [b.strip() for b in args.bugs.split(",") if b.strip()] if args.bugs else list(BUGS)
    for b in bugs:
        if b not in BUGS:
            parser.error(f"unknown variant {b!r}; one of {', '.join(BUGS)}")
    ref = reference(Path(args.ref).resolve())
    order = decoder_op_order(ref)
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for bug in bugs:
        try:
            rows.append(run_case(bug, ref, order, args.tolerances, args.reuse))
        except FlagRejected as e:
            print(
                f"error: whisperdiff trace-decoder rejects --mark-all (this whisperdiff predates the hands-off decoder capture): {e}"
            )
            return 2
        r = rows[-1]
        print(f"done {bug}: {_where(r.get('first_op'), r.get('first_position'))} ({r.get('trace_s')} s)", flush=True)
    print_table(rows)
    print(f"wall {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if all(r.get("verdict_ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
