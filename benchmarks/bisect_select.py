"""Could bisection compile once? One MAX graph that picks one block's values at run time (issue 24).

bisect_port compiles twice (block outputs, then inside the first divergent block), and MAX's compile cost
does not shrink with the graph, so it stays ~2x one untapped compile. The idea tried here: after every
block, `acc = where(select == i, value_i, acc)`, with `select` a Weight fed at load time. A graph whose
weights change loads from MAX's cache, so step 2 would be a reload, not a compile. Two questions, each
answered in a child process on a stack of raw-ops blocks (x + 0.1 gelu(x @ W_i)):

1. compile: is a reload with another `select` a cache hit, and are the outputs that block's values?
2. memory: how much more does the process hold after a run with the selection than without it? If MAX
   keeps every block's values alive for the selection, that is all of them (the full capture's memory).

    python benchmarks/bisect_select.py [--blocks 24] [--width 2048] [--steps 1500]

Stop 35 (2-core AMD EPYC, defaults): the reload took 1.3 s against a 47.5 s compile, the chosen values
exact; but the process held +929 MB with the selection, every block's three values (844 MB): the where
chain keeps them all alive (most likely fused into one kernel that reads them at the end).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(mode: str, blocks: int, width: int, steps: int) -> dict:
    import numpy as np
    from max import engine
    from max.driver import CPU
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType, Weight, ops

    dev = DeviceRef.CPU()
    rng = np.random.default_rng(0)
    weights = {f"w{i}": (rng.standard_normal((width, width)) / width**0.5).astype(np.float32) for i in range(blocks)}
    mel_type = TensorType(DType.float32, [steps, width], device=dev)
    with Graph(f"bisect_select_{mode}_{blocks}_{width}", input_types=[mel_type]) as g:
        x = g.inputs[0].tensor
        select = Weight("select", DType.int32, [1], device=dev)
        chosen = []  # the picked block's input, matmul and gelu
        for i in range(blocks):
            h = x @ Weight(f"w{i}", DType.float32, [width, width], device=dev)
            a = ops.gelu(h)
            values = [x, h, a]
            x = x + a * 0.1
            if mode == "select":
                take = ops.equal(select, ops.constant(i, DType.int32, device=dev))
                chosen = values if not chosen else [ops.where(take, v, c) for v, c in zip(values, chosen, strict=True)]
        g.output(x, *chosen)
    session = engine.InferenceSession(devices=[CPU()])
    mel = rng.standard_normal((steps, width)).astype(np.float32)
    loads, exact = [], []
    for pick in (blocks // 3, blocks // 2):
        start = time.perf_counter()
        model = session.load(g, weights_registry={**weights, "select": np.array([pick], np.int32)})
        loads.append(time.perf_counter() - start)
        out = model.execute(mel)
        if mode == "select":  # the chosen h is the chosen input times that block's weight (no other block's)
            want = out[1].to_numpy() @ weights[f"w{pick}"]
            exact.append(bool(np.allclose(out[2].to_numpy(), want, rtol=1e-3, atol=1e-3)))
    with open("/proc/self/statm") as f:
        held = int(f.read().split()[1]) * 4096 / 2**20
    return {"loads": loads, "exact": exact, "held_mb": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.blocks, args.width, args.steps)))
        return
    held = {}
    for mode in ("plain", "select"):
        argv = [sys.executable, __file__, "--child", mode, "--blocks", str(args.blocks), "--width", str(args.width)]
        done = subprocess.run([*argv, "--steps", str(args.steps)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        held[mode] = figures["held_mb"]
        loads = ", ".join(f"{s:.1f} s" for s in figures["loads"])
        exact = f", chosen values exact: {figures['exact']}" if figures["exact"] else ""
        print(f"{mode}: loads (first compiles, second another select) {loads}{exact}; held {figures['held_mb']:.0f} MB")
    every = 3 * args.blocks * args.steps * args.width * 4 / 2**20
    print(
        f"held with the selection - without: {held['select'] - held['plain']:+.0f} MB; one value "
        f"{args.steps * args.width * 4 / 2**20:.0f} MB, every block's three values {every:.0f} MB"
    )


if __name__ == "__main__":
    main()
