"""Could bisection compile once? One MAX graph that picks one block's values at run time (issue 24).

bisect_port compiles twice (block outputs, then inside the first divergent block), and MAX's compile cost
does not shrink with the graph, so it stays ~2x one untapped compile. The idea tried here: after every
block, `acc = where(select == i, value_i, acc)`, with `select` a Weight fed at load time. A graph whose
weights change loads from MAX's cache, so step 2 would be a reload, not a compile. A second way to pick
("cond"): in each block, `ops.cond(select == i)` stores its values into buffers the caller passes in.
Each mode runs in child processes, in a MAX cache of their own, on a stack of raw-ops blocks
(x + 0.1 gelu(x @ W_i)):

1. compile: the first load's compile time; is a reload with another `select` a cache hit, and are the
   outputs that block's values?
2. memory: how much more a process holds after runs with the selection than without it, read in a
   process that loaded the graph from the cache. If MAX kept every block's values alive for the
   selection, that would be all of them (the full capture's memory).

    python benchmarks/bisect_select.py [--blocks 24] [--width 2048] [--steps 1500]

Stop 36 (2-core AMD EPYC, defaults): compile 48.5 s plain, 55.8 s with the where chain, 56.9 s with cond;
a reload with another select 1.2-1.3 s, the chosen values exact; held after the runs 746 MB plain, +87 MB
with the where chain, +106 MB with cond, against 844 MB for every block's three values: neither keeps
them all alive. Stop 35 read +929 MB for the where chain from the process that had just compiled: that
was the compiler's memory (+880 MB in every mode here), not the selection's. Prints figures; asserts nothing.
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


def child(mode: str, blocks: int, width: int, steps: int) -> dict:
    import numpy as np
    from max import engine
    from max.driver import CPU, Buffer
    from max.dtype import DType
    from max.graph import BufferType, DeviceRef, Graph, TensorType, Weight, ops

    dev = DeviceRef.CPU()
    rng = np.random.default_rng(0)
    weights = {f"w{i}": (rng.standard_normal((width, width)) / width**0.5).astype(np.float32) for i in range(blocks)}
    mel_type = TensorType(DType.float32, [steps, width], device=dev)
    buffer_types = [BufferType(DType.float32, [steps, width], device=dev)] * 3 if mode == "cond" else []
    with Graph(f"bisect_select_{mode}_{blocks}_{width}", input_types=[mel_type, *buffer_types]) as g:
        x = g.inputs[0].tensor
        buffers = [b.buffer for b in g.inputs[1:]]
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
            if mode == "cond":  # the picked block's branch stores its values into buffers the caller passes in
                take = ops.reshape(ops.equal(select, ops.constant(i, DType.int32, device=dev)), [])

                def store(values=values):
                    for buffer, v in zip(buffers, values, strict=True):
                        ops.buffer_store(buffer, v)

                ops.cond(take, None, store, lambda: None)
        g.output(x, *chosen)
    session = engine.InferenceSession(devices=[CPU()])
    mel = rng.standard_normal((steps, width)).astype(np.float32)
    loads, exact = [], []
    for pick in (blocks // 3, blocks // 2):
        start = time.perf_counter()
        model = session.load(g, weights_registry={**weights, "select": np.array([pick], np.int32)})
        loads.append(time.perf_counter() - start)
        stored = [Buffer.from_numpy(np.zeros((steps, width), np.float32)) for _ in buffer_types]
        out = [*model.execute(mel, *stored), *stored]
        if mode != "plain":  # the chosen h is the chosen input times that block's weight (no other block's)
            want = out[1].to_numpy() @ weights[f"w{pick}"]
            exact.append(bool(np.allclose(out[2].to_numpy(), want, rtol=1e-3, atol=1e-3)))
    from whisperdiff.analysis.heap import resident_mb

    return {"loads": loads, "exact": exact, "held_mb": resident_mb()}


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
    # A MAX cache of its own (its own HOME): each graph's first load is a cold compile. A small unrelated
    # graph compiles first, so MAX's one-time kernel build is not counted against any mode.
    home = tempfile.mkdtemp(prefix="wd-select-home-")
    env = {**os.environ, "HOME": home}

    def run(mode: str, blocks: int, width: int, steps: int) -> dict:
        argv = [sys.executable, __file__, "--child", mode, "--blocks", str(blocks), "--width", str(width)]
        done = subprocess.run([*argv, "--steps", str(steps)], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    try:
        run("plain", 1, 64, 8)
        held = {}
        for mode in ("plain", "select", "cond"):
            # the first process compiles; the memory is read in a second one, which loads from the cache: a
            # process that compiled still holds the compiler's memory (stop 35 read that as the selection's)
            first = run(mode, args.blocks, args.width, args.steps)
            figures = run(mode, args.blocks, args.width, args.steps)
            held[mode] = figures["held_mb"]
            loads = ", ".join(f"{s:.1f} s" for s in figures["loads"])
            exact = f", chosen values exact: {figures['exact']}" if figures["exact"] else ""
            print(
                f"{mode}: compile {first['loads'][0]:.1f} s; from the cache: loads {loads} (the second with another "
                f"select){exact}; held after the runs {figures['held_mb']:.0f} MB (the process that compiled: "
                f"{first['held_mb']:.0f} MB)"
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    every = 3 * args.blocks * args.steps * args.width * 4 / 2**20
    print(
        f"held with the selection - without: {held['select'] - held['plain']:+.0f} MB (where chain), "
        f"{held['cond'] - held['plain']:+.0f} MB (cond and buffers); one value "
        f"{args.steps * args.width * 4 / 2**20:.0f} MB, every block's three values {every:.0f} MB"
    )


if __name__ == "__main__":
    main()
