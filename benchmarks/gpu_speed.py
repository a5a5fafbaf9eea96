"""Time one encoder pass (untapped: only the output is recorded) on a device, for benchmarks/gpu.sh.

    python benchmarks/gpu_speed.py --impl max --device gpu --dtype bfloat16 --model random:large-v3

Prints one line: impl, device, dtype, model, load/compile seconds, median seconds per pass over
--repeats passes (after one warm-up pass), of which the encoder's own call (inputs already on the
device, outputs not yet copied back: where a slow pass spends its time), and the output's finiteness.
--compile-only builds and loads the graph and stops, so that gpu.sh can fill MAX's compile cache in
parallel with other work and time the pass later from a warm cache. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", default="max", choices=("max", "torch"))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--model", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile-only", action="store_true")
    args = p.parse_args()

    from whisperdiff.capture.session import Session
    from whisperdiff.inputs.audio import prepare_input

    t0 = time.perf_counter()
    session = Session(args.impl, model=args.model, device=args.device, dtype=args.dtype, taps="output")
    setup = time.perf_counter() - t0
    if args.compile_only:
        print(f"{args.impl} {args.device} {args.dtype} {args.model or 'tiny.en'}: set up in {setup:.1f} s")
        return
    mel = prepare_input(session.loaded.dims.n_mels).mel  # the shipped clip
    out = {}

    def record(name: str, value: np.ndarray) -> None:
        out[name] = value

    session.runner.run(mel, record)  # warm-up: first-run allocations and kernel selection
    times, encoder = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        encoder.append(session.runner.run(mel, record)["encoder_seconds"])
        times.append(time.perf_counter() - t)
    finite = all(bool(np.isfinite(np.asarray(v, dtype=np.float32)).all()) for v in out.values())
    print(
        f"{args.impl:5s} {session.runner.facts().get('device', args.device):5s} {args.dtype:9s} "
        f"{args.model or 'tiny.en':14s} setup {setup:6.1f} s  pass {statistics.median(times) * 1000:8.1f} ms "
        f"(median of {args.repeats}; encoder call {statistics.median(encoder) * 1000:.1f} ms)  output finite: {finite}"
    )


if __name__ == "__main__":
    main()
