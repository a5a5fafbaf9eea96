"""Time to the named op for a captured port: `bisect_port` (one graph, two runs) against one full capture.

The port is examples/max_nn_encoder.py (max.nn layers, captured with mark_all, no names given) with block 1's
key projection loaded with its query weight; A is openai-whisper's trace of the same model. The map that
bisect_port reads comes from a full capture of the working port, made once before the rounds (a user has it
from the last good version). Each configuration runs in its own process, in a MAX cache of its own (its own
HOME, a copy of one warmed by an unrelated graph), so every graph below is compiled cold:

- untapped: compile the port's graph with its output only, run it (the floor: what any answer costs);
- full:     compile the port with every canonical-shaped value as an output, trace it, compare (the finding);
- bisect:   bisect_port: the stem and block outputs, then the first divergent block's values; one graph
            (PickBlock) compiled at step 1 and loaded from MAX's cache at step 2 with the block picked.

Prints wall and compile time, the outputs each graph has, and the finding, then the ratios to untapped, and
whether bisect_port names what the full capture names. Prints figures; asserts nothing.

    python benchmarks/bisect_port_cost.py [--model default --model random:large-v3] [--rounds 1]
    python benchmarks/bisect_port_cost.py --model random:large-v3 --map-from default --no-full

At large-v3 a full capture returns 808 canonical-shaped values at once (8.4 GB; 14.5 GB peak RSS on a 2-core,
24 GB machine), so --no-full leaves it out where memory is short, and --map-from takes the working port's map
from a full capture at another size: the map names the port's values by module path, the same keys at any size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
BUG = "key-from-query"


def child(how: str, model: str, ref: str, saved: str, out: str) -> dict:
    """One configuration, timed from inside a fresh process (the imports are not counted)."""
    import numpy as np

    sys.path.insert(0, str(EXAMPLES))
    import max_nn_encoder as ex

    import whisperdiff as wd
    from whisperdiff.capture.captured_trace import trace_captured
    from whisperdiff.mapping.maps import read_map

    loaded = wd.load_model(model)
    a = wd.load_trace(ref)
    outputs, finding, steps, t0 = [], None, [], time.perf_counter()
    if how == "untapped":
        d = loaded.dims
        from max import engine
        from max.driver import CPU
        from max.dtype import DType
        from max.graph import DeviceRef, Graph, TensorType

        enc = ex.Encoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer, DeviceRef.CPU())
        enc.load_state_dict(ex.whisper_weights(loaded.state_dict))
        mel = TensorType(DType.float32, [1, d.n_mels, 2 * d.n_audio_ctx], device=DeviceRef.CPU())
        with Graph("maxnn_port_untapped", input_types=[mel]) as graph:
            graph.output(enc(graph.inputs[0].tensor))
        compiled = engine.InferenceSession(devices=[CPU()]).load(graph, weights_registry=enc.state_dict())
        compile_s = time.perf_counter() - t0
        compiled.execute(np.ascontiguousarray(np.asarray(a["mel"]), np.float32))
        outputs = [1]
    elif how == "full":
        cap, run = ex.captured(loaded, bug=BUG)
        compile_s = time.perf_counter() - t0
        trace_captured(out, cap, run, model=loaded, impl="max.nn port", reference=a, saved=read_map(saved))
        c = wd.compare(a, out, model=loaded)
        outputs = [len(cap.chosen)]
        finding = c.findings[0] if c.findings else None
    else:
        b = wd.bisect_port(a, lambda select: ex.captured(loaded, select, BUG), saved=read_map(saved), out=out)
        compile_s = sum(s.compile_seconds for s in b.steps)
        outputs = [s.tap_count for s in b.steps]
        steps = [[round(s.compile_seconds, 1), round(s.run_seconds, 1)] for s in b.steps]
        finding = b.comparison.findings[0] if b.comparison.findings else None
    return {
        "how": how,
        "wall_s": round(time.perf_counter() - t0, 2),
        "compile_s": round(compile_s, 2),
        "outputs": outputs,
        "finding": f"{finding.kind} at {finding.op}" if finding else None,
        **({"steps (build and load, trace and compare)": steps} if how == "bisect" else {}),
    }


def run_child(how: str, model: str, ref: Path, saved: Path, work: Path, home: Path) -> dict:
    out = work / f"{how}-out"
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, __file__, "--child", how, "--model", model, "--ref", str(ref), "--saved", str(saved)]
    proc = subprocess.run(
        [*args, "--out", str(out)], env={**os.environ, "HOME": str(home)}, capture_output=True, text=True
    )
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        return {"how": how, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path[:0] = [str(EXAMPLES), str(HERE)]
    from bisect_cost import WARM_MODEL, fresh_home, parser, summarize, workspace

    p = parser(__doc__)
    p.add_argument("--saved", default=None, help=argparse.SUPPRESS)
    p.add_argument("--map-from", default=None, help="the model the working port's map is captured on (default: each)")
    p.add_argument("--no-full", action="store_true", help="leave out the full capture (too large at large-v3)")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model[0], args.ref, args.saved, args.out)))
        return
    import max_nn_encoder as ex

    import whisperdiff as wd
    from whisperdiff.capture.captured_trace import trace_captured

    work, warm_ref = workspace(args.dir, "wd-bisect-port-")
    for model in args.model or ["default"]:
        loaded = wd.load_model(model)
        ref, saved = work / "reference", work / "port.map.toml"
        shutil.rmtree(ref, ignore_errors=True)
        wd.trace("torch", model=loaded, out=ref)
        t0 = time.perf_counter()
        mapped = wd.load_model(args.map_from) if args.map_from else loaded
        map_ref = ref if mapped is loaded else work / "map-reference"
        if mapped is not loaded:
            wd.trace("torch", model=mapped, out=map_ref)
        cap, run = ex.captured(mapped)  # the working port's full capture: the map a user keeps
        trace_captured(work / "clean", cap, run, model=mapped, impl="max.nn port", reference=map_ref, map_path=saved)
        shutil.rmtree(work / "clean", ignore_errors=True)
        print(
            f"\n{model}: the working port's map made on {mapped.model_id} in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        rows: dict[str, list[dict]] = {"untapped": [], "full": [], "bisect": []}
        if args.no_full:
            del rows["full"]
        for r in range(args.rounds):
            # MAX's one-time kernel build, once a round; each configuration compiles in a copy of that cache
            home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
            run_child("untapped", WARM_MODEL, warm_ref, saved, work, home)
            order = list(rows) if r % 2 == 0 else list(rows)[::-1]  # interleaved, alternating order
            for how in order:
                own = fresh_home(home, work)
                row = run_child(how, model, ref, saved, work, own)
                shutil.rmtree(own, ignore_errors=True)
                rows[how].append(row)
                print(f"  round {r + 1} {how:8s} {json.dumps(row)}", flush=True)
            shutil.rmtree(home, ignore_errors=True)
        summarize(f"{model}, bug {BUG}", rows, args.rounds)


if __name__ == "__main__":
    main()
