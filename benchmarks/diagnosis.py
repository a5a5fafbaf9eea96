"""How well does `whisperdiff compare` name bugs it has never seen? The novel-bug set, scored.

    python benchmarks/diagnosis.py                          # embedded tiny.en on the shipped clip
    python benchmarks/diagnosis.py --model "random:tiny,n_audio_layer=2,n_audio_state=64,n_audio_head=2"
    python benchmarks/diagnosis.py --only rms-norm --only causal-mask --json results.json

Traces openai-whisper's torch encoder (the reference, attention probabilities included), the
independent encoder of benchmarks/novel_bugs.py clean in float32 and in float64, and that encoder
with each planted bug (through whisperdiff.Tracer); checks that each bug changes exactly its
expected op first (bit-exact before it); runs `whisperdiff.compare(reference, run)` on each and
scores the top finding (the first finding that is not severity "info"):

    correct     top finding at the expected op, with the expected kind (precision: names the dtype)
    op-only     right op, kind `divergence` (honest, not specific)
    misleading  a specific kind that is not the expected one (or precision naming another dtype)
    missed      no finding, or the wrong op with `divergence`

and prints top-1 op accuracy, specific-kind accuracy (kind right, whatever the op), misleading
findings, and false alarms (findings of severity "error") on the clean float32 and float64 runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import novel_bugs as nb  # noqa: E402

DTYPE_WORDS = ("float16", "bfloat16", "tf32")
VERDICTS = ("correct", "op-only", "misleading", "missed")


def top_finding(comparison):
    """The top finding: the first one that is not an informational note (None when there is none)."""
    return next((f for f in comparison.findings if getattr(f, "severity", "error") != "info"), None)


def dtypes_named(message: str) -> set[str]:
    """Dtype words named as whole words (`\\bfloat16\\b` does not match "bfloat16")."""
    return {w for w in DTYPE_WORDS if re.search(rf"\b{w}\b", message or "")}


def expected_op(bug: nb.Bug, n_layer: int, with_weights: bool = True) -> str:
    op = bug.expected_op(n_layer)
    return op.replace(".attn.weights", ".attn.wv") if not with_weights else op


def score(bug: nb.Bug, op: str, finding) -> dict:
    """One bug's verdict from the top finding (kind, op, message) against the expected op and kind."""
    kind, at, message = (finding.kind, finding.op, finding.message) if finding is not None else (None, None, "")
    named = dtypes_named(message)
    op_ok = at == op
    kind_ok = kind == bug.kind and (bug.kind != "precision" or bug.dtype in named)
    wrong_dtype = kind == "precision" and bug.kind == "precision" and not kind_ok and bool(named)
    misleading = finding is not None and not kind_ok and (kind != bug.kind or wrong_dtype) and kind != "divergence"
    if misleading:
        verdict = "misleading"
    elif op_ok and kind_ok:
        verdict = "correct"
    elif op_ok:
        verdict = "op-only"
    else:
        verdict = "missed"
    return {
        "op_ok": op_ok,
        "kind_ok": kind_ok,
        "misleading": misleading,
        "verdict": verdict,
        "top_op": at,
        "top_kind": kind,
        "message": message,
    }


def clean_alarms(comparison) -> list[dict]:
    return [{"kind": f.kind, "op": f.op, "message": f.message} for f in comparison.findings if f.severity == "error"]


def bug_row(
    bug: nb.Bug, model, ref, clean32, work: Path, with_weights: bool = True, samples=None, keep: bool = False
) -> dict:
    """Trace one bug, check it changes its expected op first, compare it with the reference, score it."""
    import whisperdiff as wd

    want = expected_op(bug, model.dims.n_audio_layer, with_weights)
    out = Path(work) / f"bug-{bug.name}"
    trace = nb.write_trace(out, model, bug, with_weights=with_weights, samples=samples)
    changed = nb.first_changed_op(clean32, trace)
    t0 = time.perf_counter()
    try:
        c = wd.compare(ref, trace)
        top, first, error = top_finding(c), c.first_divergence, None
    except Exception as e:  # a crash in compare is a result too: the bug is missed
        top, first, error = None, None, f"{type(e).__name__}: {e}"
    row = {
        "bug": bug.name,
        "description": bug.description,
        "expected_op": want,
        "expected_kind": bug.kind,
        "expected_dtype": bug.dtype,
        "first_changed_op": changed,
        "valid": changed == want,
        "first_divergence": first,
        "compare_s": round(time.perf_counter() - t0, 2),
        **score(bug, want, top),
    }
    if error:
        row["message"] = f"compare failed: {error}"
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


_WORKER: dict = {}


def _init_worker(model, ref_path, clean_path, work, with_weights, keep, threads):
    import torch

    import whisperdiff as wd

    torch.set_num_threads(threads)
    _WORKER.update(
        model=wd.load_model(model) if not isinstance(model, wd.LoadedModel) else model,
        ref=wd.load_trace(ref_path),
        clean=wd.load_trace(clean_path),
        work=work,
        with_weights=with_weights,
        keep=keep,
        samples=nb.default_samples(),
    )


def _worker_row(name: str) -> dict:
    w = _WORKER
    return bug_row(
        nb.BUGS_BY_NAME[name], w["model"], w["ref"], w["clean"], w["work"], w["with_weights"], w["samples"], w["keep"]
    )


def run(
    model=None,
    only=(),
    workdir: Path | None = None,
    keep: bool = False,
    with_weights: bool = True,
    on_event=None,
    jobs: int = 1,
) -> dict:
    """Trace, check and compare everything; returns {"bugs": [...], "clean": {...}, "figures": {...}}.
    model: a load_model spec or LoadedModel. jobs: bugs traced and compared in parallel processes.
    on_event(kind, payload) is called as results arrive ("clean", "bug")."""
    import os

    import torch

    import whisperdiff as wd

    on_event = on_event or (lambda *_: None)
    unknown = set(only) - {b.name for b in nb.BUGS}
    if unknown:
        raise SystemExit(f"error: unknown bug(s) {', '.join(sorted(unknown))}; known: {', '.join(nb.BUGS_BY_NAME)}")
    bugs = [b for b in nb.BUGS if not only or b.name in only]
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="wd-novel-")) if own_dir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        loaded = model if isinstance(model, wd.LoadedModel) else wd.load_model(model)
        samples = nb.default_samples()
        ref = wd.trace("torch", model=loaded, taps="all" if with_weights else "default", out=work / "ref")
        clean32 = nb.write_trace(work / "clean-float32", loaded, with_weights=with_weights, samples=samples)
        clean = {}
        for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
            trace = (
                clean32
                if name == "float32"
                else nb.write_trace(
                    work / "clean-float64", loaded, dtype=dtype, with_weights=with_weights, samples=samples
                )
            )
            t0 = time.perf_counter()
            c = wd.compare(ref, trace)
            clean[name] = {
                "alarms": clean_alarms(c),
                "first_divergence": c.first_divergence,
                "findings": len(c.findings),
                "compare_s": round(time.perf_counter() - t0, 2),
            }
            on_event("clean", {"name": name, **clean[name]})
            if name == "float64" and not keep:
                shutil.rmtree(work / "clean-float64", ignore_errors=True)
        results = []
        if jobs <= 1:
            for bug in bugs:
                results.append(bug_row(bug, loaded, ref, clean32, work, with_weights, samples, keep))
                on_event("bug", results[-1])
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = max(1, (os.cpu_count() or 1) // jobs)
            init = (
                model if isinstance(model, str) or model is None else loaded,
                str(ref.path),
                str(clean32.path),
                str(work),
                with_weights,
                keep,
                threads,
            )
            with ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), _init_worker, init) as pool:
                futures = [pool.submit(_worker_row, b.name) for b in bugs]
                for f in as_completed(futures):
                    results.append(f.result())
                    on_event("bug", results[-1])
            rank = {b.name: i for i, b in enumerate(bugs)}
            results.sort(key=lambda r: rank[r["bug"]])
        figures = summarise(results, clean)
        figures["wall_s"] = round(time.perf_counter() - t_start, 1)
        return {
            "model": loaded.model_id,
            "with_weights": with_weights,
            "bugs": results,
            "clean": clean,
            "figures": figures,
        }
    finally:
        if own_dir and not keep:
            shutil.rmtree(work, ignore_errors=True)


def summarise(results: list[dict], clean: dict) -> dict:
    n = len(results)
    count = {v: sum(r["verdict"] == v for r in results) for v in VERDICTS}
    return {
        "bugs": n,
        "valid": sum(r["valid"] for r in results),
        "op_accuracy": sum(r["op_ok"] for r in results) / n if n else float("nan"),
        "kind_accuracy": sum(r["kind_ok"] for r in results) / n if n else float("nan"),
        "first_divergence_accuracy": sum(r["first_divergence"] == r["expected_op"] for r in results) / n if n else 0,
        "misleading": count["misleading"],
        "verdicts": count,
        "false_alarms_float32": len(clean.get("float32", {}).get("alarms", [])),
        "false_alarms_float64": len(clean.get("float64", {}).get("alarms", [])),
    }


def main() -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="whisperdiff model spec (default: the embedded tiny.en)")
    parser.add_argument("--only", action="append", default=[], help="run only this bug (repeatable, or a,b,c)")
    parser.add_argument("--json", default=None, help="write every result and the figures to this file")
    parser.add_argument("--workdir", default=None, help="keep traces here (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the traces (with --workdir)")
    parser.add_argument("--no-weights", action="store_true", help="trace without attention probabilities")
    parser.add_argument("--jobs", type=int, default=1, help="bugs traced and compared in parallel processes")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    args = parser.parse_args()
    console = Console(width=200)
    model_spec = None if args.model in (None, "default") else args.model
    if args.list:
        table = Table("bug", "expected op (tiny.en)", "kind", "what it does")
        for b in nb.BUGS:
            table.add_row(
                b.name, b.expected_op(4), b.kind + (f" ({b.dtype})" if b.dtype else ""), escape(b.description)
            )
        console.print(table)
        return
    only = [name for item in args.only for name in item.split(",") if name]

    colour = {"correct": "green", "op-only": "yellow", "misleading": "red", "missed": "magenta"}

    def on_event(kind, p):
        if kind == "clean":
            console.print(
                f"clean {p['name']}: {len(p['alarms'])} error findings, first divergence "
                f"{p['first_divergence']} ({p['compare_s']} s)"
            )
            for a in p["alarms"]:
                console.print(f"   {a['kind']} at {a['op']}: {a['message'][:160]}", markup=False)
        else:
            valid = "" if p["valid"] else f"  [red]INVALID: first changed op {p['first_changed_op']}[/]"
            console.print(
                f"[{colour[p['verdict']]}]{p['verdict']:10s}[/] {p['bug']:24s} expected "
                f"{p['expected_op']} {p['expected_kind']}, got {p['top_op']} {p['top_kind']} "
                f"({p['compare_s']} s){valid}"
            )

    result = run(
        model_spec,
        only,
        Path(args.workdir) if args.workdir else None,
        args.keep,
        not args.no_weights,
        on_event,
        args.jobs,
    )
    table = Table(
        "bug",
        "expected op / kind",
        "top finding op / kind",
        "message (160 chars)",
        "verdict",
        title=f"novel bugs on {result['model']}",
        show_lines=True,
    )
    for r in result["bugs"]:
        kind = r["expected_kind"] + (f" ({r['expected_dtype']})" if r["expected_dtype"] else "")
        table.add_row(
            r["bug"],
            f"{r['expected_op']}\n{kind}",
            f"{r['top_op']}\n{r['top_kind']}",
            escape((r["message"] or "")[:160]),
            f"[{colour[r['verdict']]}]{r['verdict']}[/]",
        )
    console.print(table)
    f = result["figures"]
    console.print(
        f"bugs {f['bugs']} (valid: {f['valid']}/{f['bugs']})  top-1 op accuracy {f['op_accuracy']:.1%}  "
        f"specific-kind accuracy {f['kind_accuracy']:.1%}  misleading {f['misleading']}  "
        f"first-divergence accuracy {f['first_divergence_accuracy']:.1%}\n"
        f"verdicts {f['verdicts']}\n"
        f"false alarms: clean float32 {f['false_alarms_float32']}, clean float64 {f['false_alarms_float64']}  "
        f"(wall {f['wall_s']} s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
