"""Memory and time of `compare` on two large traces (synthetic, large-v3 shapes, default taps).

Writes two traces of random float32 activations with large-v3's canonical shapes (32 blocks of
1500 x 1280, MLP 1500 x 5120; about 4.5 GB each without attention probabilities), B = A plus a
perturbation from block 20 on, then runs `compare` in a child process and prints its wall time and
peak resident memory. Prints figures; asserts nothing.

    python benchmarks/compare_large.py [--dir /big/disk] [--keep] [--layers 32]

benchmarks/speed.py runs the same compare among the other goals, interleaved over rounds.
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


def write_pair(root: Path, layers: int) -> tuple[Path, Path, int]:
    import numpy as np

    import whisperdiff as wd
    from whisperdiff.inputs.models import preset_dims
    from whisperdiff.names import op_specs

    dims = {**preset_dims("large-v3"), "n_audio_layer": layers}
    specs = [s for s in op_specs(dims) if not s.optional]
    manifest = {
        "impl": "synthetic",
        "device": "cpu",
        "dtype": "float32",
        "taps": "default",
        "injected": [],
        "model": {"id": "synthetic-large-v3", "source": "synthetic", "dims": dims, "weights_sha256": "0" * 64},
        "input": {"kind": "synthetic", "path": "synthetic", "sha256": "1" * 64, "mel_sha256": "2" * 64},
    }
    rng = np.random.default_rng(0)
    total = 0
    with wd.TraceWriter(root / "a", manifest) as wa, wd.TraceWriter(root / "b", manifest) as wb:
        for spec in specs:
            x = rng.standard_normal(spec.shape, dtype=np.float32)
            wa.record(spec.name, x)
            if spec.name.startswith("blocks.") and int(spec.name.split(".")[1]) >= 20:
                x += np.float32(1e-2) * rng.standard_normal(spec.shape, dtype=np.float32)
            wb.record(spec.name, x)
            total += x.nbytes
    return root / "a", root / "b", total


def child(a: str, b: str) -> None:
    import resource

    from whisperdiff.analysis.compare import compare

    start = time.perf_counter()
    result = compare(a, b)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak,
                "ops": len(result.table),
                "first_divergence": result.first_divergence,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the two traces (needs ~9 GB)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    root = Path(tempfile.mkdtemp(prefix="whisperdiff-large-", dir=args.dir))
    try:
        start = time.perf_counter()
        a, b, nbytes = write_pair(root, args.layers)
        write_seconds = time.perf_counter() - start
        done = subprocess.run([sys.executable, __file__, "--child", str(a), str(b)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"compare failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        from speed import read_all

        read_seconds = read_all([a, b])
        print(
            f"two traces of {nbytes / 1e9:.2f} GB each ({figures['ops']} ops, large-v3 shapes, {args.layers} blocks), "
            f"written in {write_seconds:.0f} s"
        )
        print(
            f"compare: {figures['seconds']:.1f} s, peak RSS {figures['peak_rss_mb']:.0f} MB (goal <= 1 GB), "
            f"first divergence {figures['first_divergence']}"
        )
        print(
            f"reading both traces from disk: {read_seconds:.1f} s; compare / read = {figures['seconds'] / read_seconds:.2f}x"
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
