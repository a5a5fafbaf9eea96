"""Time to the named op: `bisect` (the encoder's pieces: stem, one block, ln_post) against one default-tap trace,
each compiled cold.

For each model, B is MAX with a planted bug; A is openai-whisper's trace of the same model (made once).
Ways to get from "B is wrong" to an answer, each in its own process, interleaved over rounds. Each one runs
in a MAX cache of its own (its own HOME), a copy of one where an unrelated graph was compiled first (so
MAX's one-time kernel build is not counted against any), so every graph below is compiled cold. A cache
shared between configurations would not do: MAX caches the kernels of a graph, and another graph of the
same dims (bisect's pieces, and the whole encoder) reuses them.

- untapped: compile and run the encoder's graph with only its output (the floor: what any answer costs);
- untapped-bug: the same with the bug planted: the graph with the run-time bug switches (the one `bisect`
            and `full` build on), only its output tapped; the floor for a port that carries its bug;
- full:     compile B's graph with every default op tapped, trace, compare (the finding);
- bisect:   `whisperdiff bisect`: the encoder streamed (three small graphs: the stem, one block run per block,
            ln_post), its block outputs recorded, then the divergent block run again on its own input, the finding.

Prints each one's wall time, compile time, peak RSS and the finding, then bisect / untapped and
full / untapped, and whether bisect names what the full trace names. Prints figures; asserts nothing.

    python benchmarks/bisect_cost.py [--model default --model random:large-v3] [--fault kv-swap] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from encoder import peak_rss_mb

WARM_MODEL = "random:tiny,n_audio_layer=1,n_audio_state=32,n_audio_head=2,n_text_layer=1,n_text_state=32,n_text_head=2"


def child(how: str, model: str, fault: str, ref: str, out: str) -> dict:
    """One configuration, timed from inside a fresh process (the imports are not counted)."""
    import numpy as np

    import whisperdiff as wd
    from whisperdiff.analysis.compare import compare
    from whisperdiff.capture.session import Session
    from whisperdiff.experiments.bisect import bisect
    from whisperdiff.inputs.audio import EncoderInput

    loaded = wd.load_model(model)
    a = wd.load_trace(ref)
    t0 = time.perf_counter()
    if how == "bisect":
        b = bisect(a, impl="max", model=loaded, inject=[fault], out=out)
        compile_s = sum(s.compile_seconds for s in b.steps)
        c = b.comparison
    else:
        # untapped: the encoder's own graph (no bug switches, only its output); untapped-bug: the graph with the
        # bug switches, the bug on, only its output; full: that graph with every default op tapped
        session = Session(
            "max",
            model=loaded,
            taps="default" if how == "full" else "output",
            inject=None if how == "untapped" else [fault],
        )
        compile_s = time.perf_counter() - t0
        trace = session.trace(out=out, given_input=EncoderInput(np.array(a["mel"]), a.manifest.input.to_json()))
        c = compare(a, trace, model=loaded) if how == "full" else None
    wall = time.perf_counter() - t0
    top = c.findings[0] if c is not None and c.findings else None
    return {
        "how": how,
        "wall_s": round(wall, 2),
        "compile_s": round(compile_s, 2),
        "finding": f"{top.kind} at {top.op}" if top else None,
        "trace_bytes": sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def run_child(how: str, model: str, fault: str, ref: Path, work: Path, home: Path) -> dict:
    out = work / f"{how}-out"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HOME": str(home)}
    args = [sys.executable, __file__, "--child", how, "--model", model, "--fault", fault, "--ref", str(ref)]
    t0 = time.perf_counter()
    proc = subprocess.run([*args, "--out", str(out)], env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        return {"how": how, "error": proc.stderr.strip().splitlines()[-1:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["process_s"] = round(total, 1)
    return row


def parser(doc: str) -> argparse.ArgumentParser:
    """The options both bisection benchmarks take, and the hidden ones of their child processes."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", action="append", help="a model spec, repeatable (default: default; random:large-v3)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--dir", default=None, help="work folder (traces of large-v3 take several GB)")
    for hidden in ("--child", "--ref", "--out"):
        p.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    return p


def fresh_home(warm: Path, work: Path) -> Path:
    """A copy of the warmed HOME, for one configuration: its graphs and kernels are its own."""
    home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
    shutil.copytree(warm, home, dirs_exist_ok=True, symlinks=True)
    return home


def workspace(directory: str | None, prefix: str) -> tuple[Path, Path]:
    """The work folder, and in it openai-whisper's trace of the warm-up model (whose graph each round's MAX
    cache compiles first)."""
    import whisperdiff as wd

    work = Path(directory or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    wd.trace("torch", model=WARM_MODEL, out=work / "warm-reference")
    return work, work / "warm-reference"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--fault", default="kv-swap")
    p.add_argument("--only", default="untapped,untapped-bug,full,bisect", help="configurations (comma list)")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model[0], args.fault, args.ref, args.out)))
        return
    import whisperdiff as wd

    work, small_ref = workspace(args.dir, "wd-bisect-")
    for model in args.model or ["default"]:
        ref = work / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        t0 = time.perf_counter()
        wd.trace("torch", model=model, out=ref)
        print(f"\n{model}: reference (openai-whisper, default taps) traced in {time.perf_counter() - t0:.1f} s")
        rows: dict[str, list[dict]] = {h: [] for h in args.only.split(",")}
        for r in range(args.rounds):
            # MAX's one-time kernel build is paid once a round in a warmed cache; each configuration runs in a
            # copy of it, where each of its graphs is new, so each compile is that configuration's own cost.
            home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
            warm = run_child("untapped", WARM_MODEL, args.fault, small_ref, work, home)
            print(f"  round {r + 1} warm-up (another model's graph): {warm.get('compile_s')} s compile", flush=True)
            order = list(rows) if r % 2 == 0 else list(rows)[::-1]  # interleaved, alternating order
            for how in order:
                own = fresh_home(home, work)
                row = run_child(how, model, args.fault, ref, work, own)
                shutil.rmtree(own, ignore_errors=True)
                rows[how].append(row)
                print(f"  round {r + 1} {how:8s} {json.dumps(row)}", flush=True)
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(ref, ignore_errors=True)
        summarize(f"{model}, fault {args.fault}", rows, args.rounds)


def summarize(what: str, rows: dict[str, list[dict]], rounds: int) -> None:
    """Medians per configuration against untapped, and whether bisection named what the full trace named."""
    med = {h: statistics.median(x["wall_s"] for x in v if "wall_s" in x) for h, v in rows.items() if v}
    print(f"{what}, medians over {rounds} round(s), each graph compiled cold:")
    for how, wall in med.items():  # against each baseline that ran (--only may leave either out)
        ratios = [f"{wall / med[base]:.2f}x {base}" for base in ("untapped", "untapped-bug") if base in med]
        print(f"  {how:12s} {wall:7.1f} s  ({', '.join(ratios)})")
    if not rows.get("bisect"):
        return
    if not rows.get("full"):
        print(f"  bisection names {rows['bisect'][0].get('finding')} (no full trace to set it against)")
        return
    same = {x.get("finding") for x in rows["full"]} == {x.get("finding") for x in rows["bisect"]}
    print(f"  bisection names what the full trace names: {same} ({rows['bisect'][0].get('finding')})")


if __name__ == "__main__":
    main()
