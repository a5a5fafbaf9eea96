"""What a GPU's float32 (tensor cores: operands reduced to TF32, products in float32) does to openai-whisper's
encoder, simulated on CPU (whisperdiff.gate.testing.gpu_float32): per operand mode and model, the worst op by
each metric against the exact float32 trace, and whether `check -t tf32` passes. The source of the limits in
data/tolerances/tf32.toml.

    python benchmarks/tf32_sim.py [--large]     # --large adds random:large-v3 (minutes on 2 cores)

Weights matter: tiny.en's come from a float16 checkpoint, so TF32 holds them exactly and only activations
are reduced; random weights are full float32, so both operands are. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import whisperdiff as wd
from whisperdiff.gate.testing import gpu_float32

MODES = {  # what each GPU reduces to tf32 (docs/gpu.md)
    "MAX-H200": {},  # linear layers, operands truncated: reproduces the H200's 48 failing ops to 1%
    "cuDNN": {"linears": False, "convs": True, "operands": "tf32"},  # torch on CUDA, TF32 left on
    "every-matmul": {"attention": True, "convs": True, "operands": "tf32"},  # rounded, everywhere
    "every-trunc": {"attention": True, "convs": True},  # truncated, everywhere: the worst case
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--large", action="store_true", help="also random:large-v3 (32 layers, d_model 1280)")
    args = p.parse_args()
    models = ["tiny.en", "random:tiny"] + (["random:large-v3"] if args.large else [])
    tol = wd.load_tolerances("tf32")
    print(f"{'model':16s} {'GPU':14s} {'max rel L2':>18s} {'min cosine':>28s} {'max |std B/A - 1|':>30s}  -t tf32")
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            ref = wd.trace("torch", model=model, out=Path(tmp) / "ref")
            for mode, kw in MODES.items():
                t0 = time.perf_counter()
                with gpu_float32(**kw):
                    sim = wd.trace("torch", model=model, out=Path(tmp) / mode)
                table = wd.compare(ref, sim, replay=False).table.dropna(subset=["rel_l2"])
                dev = (table["std_ratio"] - 1).abs()
                check = wd.check(ref, sim, tol)
                print(
                    f"{model:16s} {mode:14s} {table['rel_l2'].max():.2e} {table['rel_l2'].idxmax():>9s}"
                    f" {table['cosine'].min():.8f} {table['cosine'].idxmin():>17s}"
                    f" {dev.max():.2e} {dev.idxmax():>21s}  {'PASS' if check.passed else 'FAIL ' + str(len(check.failed_ops))}"
                    f"  ({time.perf_counter() - t0:.0f} s)"
                )
            del ref


if __name__ == "__main__":
    main()
