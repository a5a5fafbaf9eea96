"""What a compare costs (issues 23 and 24): a clean pair against `python -c "import torch"`, report against
compare, and a pair with a planted bug (where the replay and the hypotheses run), in one interleaved run.

    python benchmarks/compare_cost.py              # 5 rounds on the embedded tiny.en and the shipped clip
    python benchmarks/compare_cost.py --rounds 3 --json out.json

Each round runs every command once, in the same order (import torch, compare clean, report clean,
compare with a bug, compare of two clean decoder traces, compare of a bfloat16 port at the float32
tolerances, where every op diverges and each is replayed), as a user runs them: the installed
`whisperdiff` entry point, wall time from process start to exit. Figures are medians over rounds with
their spread; ratios are of medians from this same run. It also says, from a separate process, whether a
clean compare imported torch or openai-whisper at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "whisperdiff"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "whisperdiff"]


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # compare exits 1 when B diverges: a result, not a failure
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    wd = cli()
    with tempfile.TemporaryDirectory(prefix="wd-compare-cost-") as tmp:
        t = Path(tmp)
        print("tracing (torch, MAX, MAX with a planted bug, torch in bfloat16, two decoders) ...", flush=True)
        for impl, extra, name in (
            ("torch", [], "torch"),
            ("max", [], "max"),
            ("max", ["--inject", "missing-ln-post"], "max-bug"),
            ("torch", ["--dtype", "bfloat16"], "torch-bf16"),
        ):
            subprocess.run(
                [*wd, "trace", "--impl", impl, *extra, "--out", str(t / name)], check=True, capture_output=True
            )
        for impl in ("torch", "max"):
            subprocess.run(
                [*wd, "trace-decoder", "--impl", impl, "--out", str(t / f"dec-{impl}")], check=True, capture_output=True
            )
        commands = {
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "compare (clean)": [*wd, "compare", str(t / "torch"), str(t / "max")],
            "report (clean)": [*wd, "report", str(t / "torch"), str(t / "max"), "-o", str(t / "r.html")],
            "compare (planted bug)": [*wd, "compare", str(t / "torch"), str(t / "max-bug")],
            "compare (clean decoder)": [*wd, "compare", str(t / "dec-torch"), str(t / "dec-max")],
            "compare (bfloat16 port)": [*wd, "compare", str(t / "torch"), str(t / "torch-bf16")],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for r in range(args.rounds):
            for label, cmd in commands.items():
                times[label].append(run(cmd))
            print(
                f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()), flush=True
            )
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, whisperdiff as wd; c = wd.compare(sys.argv[1], sys.argv[2]); "
                "print(c.first_divergence, 'torch' in sys.modules, 'whisper' in sys.modules)",
                str(t / "torch"),
                str(t / "max"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_s = med['python -c "import torch"']
    print(f"\n{'command':28} {'median s':>9} {'spread':>13} {'x import torch':>15}")
    for k, v in times.items():
        print(f"{k:28} {med[k]:9.2f} {min(v):6.2f}-{max(v):<6.2f} {med[k] / torch_s:15.2f}")
    print(f"\nclean compare / import torch: {med['compare (clean)'] / torch_s:.2f} (goal <= 1.0)")
    print(f"report - compare (clean): {med['report (clean)'] - med['compare (clean)']:+.2f} s (goal <= +1.5 s)")
    print(f"a clean compare imported torch: {probe[1]}, openai-whisper: {probe[2]} (first divergence {probe[0]})")
    if args.json:
        Path(args.json).write_text(json.dumps({"times": times, "medians": med, "imports": probe}, indent=1))


if __name__ == "__main__":
    main()
