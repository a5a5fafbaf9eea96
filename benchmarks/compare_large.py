"""Memory and time of `compare` on two large traces (large-v3 shapes, default taps).

Synthetic (the default): two traces of random float32 activations with large-v3's canonical shapes
(32 blocks of 1500 x 1280, MLP 1500 x 5120; about 4.5 GB each without attention probabilities),
B = A plus a perturbation from block 20 on.

--real: two real traces of random:large-v3 on the shipped clip, each in its own process: A from
openai-whisper (torch), B from the MAX encoder, then B again with a planted bug (--fault). Each is
traced in a child process whose wall time and peak RSS are printed.

Then `compare` runs in a child process (with and without the replay) and its wall time and peak
resident memory are printed against the time to read both traces. Prints figures; asserts nothing.

    python benchmarks/compare_large.py [--dir /big/disk] [--keep] [--layers 32]
    python benchmarks/compare_large.py --real [--fault kv-swap] [--b max,max-bug,max-bf16] [--dir /big/disk]

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

from encoder import peak_rss_mb


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


def child(a: str, b: str, replay: bool = True) -> None:

    from whisperdiff.analysis.compare import compare

    start = time.perf_counter()
    result = compare(a, b, replay=replay)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    top = result.findings[0] if result.findings else None
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak,
                "ops": len(result.table),
                "first_divergence": result.first_divergence,
                "finding": f"{top.kind} at {top.op}" if top else None,
            }
        )
    )


def trace_child(impl: str, out: str, fault: str | None, dtype: str) -> None:
    """One real trace of random:large-v3 on the shipped clip; prints its wall time and peak RSS."""

    import whisperdiff as wd

    start = time.perf_counter()
    wd.trace(impl, model="random:large-v3", out=out, device="cpu", dtype=dtype, inject=[fault] if fault else None)
    peak = peak_rss_mb()
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak}))


def run_child(*argv: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def real(root: Path, fault: str, which: list[str]) -> None:
    from speed import read_all

    traces = {
        "torch": (root / "torch", None, "float32"),
        "max": (root / "max", None, "float32"),
        "max-bug": (root / "max-bug", fault, "float32"),
        "max-bf16": (root / "max-bf16", None, "bfloat16"),
    }
    traces = {name: t for name, t in traces.items() if name == "torch" or name in which}
    for name, (out, bug, dtype) in traces.items():
        figures = run_child("--trace", name.split("-")[0], str(out), bug or "", dtype)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(
            f"trace {name:8s} random:large-v3 {dtype}{f' --inject {bug}' if bug else ''}: {figures['seconds']:.0f} s "
            f"(MAX: compile included), {size / 1e9:.2f} GB, peak RSS {figures['peak_rss_mb'] / 1e3:.1f} GB",
            flush=True,
        )
    for b in [name for name in traces if name != "torch"]:
        pair = [traces["torch"][0], traces[b][0]]
        read_seconds = read_all(pair)
        for replay in (False, True):
            figures = run_child("--child", *map(str, pair), *([] if replay else ["--no-replay"]))
            print(
                f"compare torch {b:8s}{' (replay)' if replay else ' --no-replay'}: {figures['seconds']:.1f} s, "
                f"peak RSS {figures['peak_rss_mb']:.0f} MB (goal <= 1 GB); reading both: {read_seconds:.1f} s, "
                f"compare / read = {figures['seconds'] / read_seconds:.2f}x (goal <= 2); "
                f"first divergence {figures['first_divergence']}, finding {figures['finding']}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the two traces (needs ~9 GB)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--real", action="store_true", help="real traces of random:large-v3 (torch, MAX)")
    parser.add_argument("--fault", default="kv-swap", help="the bug planted in the second MAX trace (--real)")
    parser.add_argument(
        "--b", default="max,max-bug,max-bf16", help="--real: the B traces to make and compare with torch's (comma list)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--no-replay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, replay=not args.no_replay)
        return
    if args.trace:
        trace_child(args.trace[0], args.trace[1], args.trace[2] or None, args.trace[3])
        return
    root = Path(tempfile.mkdtemp(prefix="whisperdiff-large-", dir=args.dir))
    try:
        if args.real:
            real(root, args.fault, args.b.split(","))
            return
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
