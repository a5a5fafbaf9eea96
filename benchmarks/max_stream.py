"""Memory of a MAX trace at large-v3's dimensions: the encoder as one graph against the streamed run.

One graph returns every tap together, so a trace held the whole trace in memory at the end of the run
(4.5 GB of default taps at large-v3). The streamed run (max_encoder.build_pieces) records each block's
taps before the next block runs and reads only that block's weights. Each configuration traces
`random:large-v3` on the shipped clip in its own child process, in turn (--rounds repeats the pair),
and prints compile time, trace time, disk size and peak RSS against the goal of 1.5 x the encoder's
weights plus one op; then whether the two traces hold the same bits at every op. Prints figures;
asserts nothing.

    python benchmarks/max_stream.py [--model random:large-v3] [--dtype float32] [--inject kv-swap] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from encoder import peak_rss_mb


def trace_child(model: str, out: str, stream: str, dtype: str, inject: str) -> None:

    import whisperdiff as wd

    start = time.perf_counter()
    t = wd.trace(
        "max",
        model=model,
        out=out,
        device="cpu",
        dtype=dtype,
        inject=[inject] if inject else None,
        stream=stream == "1",
    )
    runner = t.manifest["runner"]
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "compile_seconds": runner["compile_seconds"],
                "cache_hit": runner["compile_cache_hit"],
                "streamed": runner["streamed"],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def goal_bytes(model: str, dtype: str) -> tuple[int, int]:
    """(the encoder's weights in bytes as the run holds them, the largest default tap in bytes): layer norms
    stay float32 in a half-precision run, as in max_runner.encoder_weights."""
    import numpy as np
    import torch
    from whisper.model import AudioEncoder

    import whisperdiff as wd
    from whisperdiff.names import op_specs

    d = wd.load_model(model).dims
    with torch.device("meta"):  # shapes only, no memory
        encoder = AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
    size = 4 if dtype == "float32" else 2
    norms = ("attn_ln", "mlp_ln", "ln_post")
    weights = sum(t.numel() * (4 if k.split(".")[-2:][0] in norms else size) for k, t in encoder.state_dict().items())
    largest = max(4 * int(np.prod(s.shape)) for s in op_specs(d) if not s.optional)
    return weights, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:large-v3")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--inject", default="")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the traces (~9 GB at large-v3)")
    parser.add_argument("--trace", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trace:
        trace_child(*args.trace)
        return
    weights, largest = goal_bytes(args.model, args.dtype)
    goal = 1.5 * weights + largest
    print(
        f"{args.model} {args.dtype}{' --inject ' + args.inject if args.inject else ''}: encoder weights "
        f"{weights / 1e9:.2f} GB ({args.dtype}), largest op {largest / 1e6:.0f} MB; goal peak RSS <= {goal / 1e9:.2f} GB"
    )
    root = Path(tempfile.mkdtemp(prefix="whisperdiff-stream-", dir=args.dir))
    try:
        for r in range(args.rounds):
            outs = {}
            for name, stream in (("one graph", "0"), ("streamed", "1")):
                out = root / f"{name.replace(' ', '-')}-{r}"
                done = subprocess.run(
                    [sys.executable, __file__, "--trace", args.model, str(out), stream, args.dtype, args.inject],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
                f = json.loads(done.stdout.strip().splitlines()[-1])
                size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                print(
                    f"round {r} {name:9s}: trace {f['seconds']:.0f} s (graph {'loaded' if f['cache_hit'] else 'compiled'} "
                    f"in {f['compile_seconds']:.0f} s), {size / 1e9:.2f} GB on disk, peak RSS "
                    f"{f['peak_rss_mb'] / 1e3:.2f} GB = {f['peak_rss_mb'] * 1e6 / goal:.2f}x the goal "
                    f"({'met' if f['peak_rss_mb'] * 1e6 / goal <= 1 else 'not met'})",
                    flush=True,
                )
                outs[name] = out
            import numpy as np

            import whisperdiff as wd

            a, b = (wd.load_trace(p) for p in outs.values())
            same = sum(np.array_equal(a[op], b[op]) for op in a.ops)
            print(f"round {r}: the same bits at {same}/{len(a.ops)} ops (ops in the same order: {a.ops == b.ops})")
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
