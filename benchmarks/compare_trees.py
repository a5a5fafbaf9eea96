"""One compare, several source trees, interleaved: how much a change to compare's speed buys.

Each round reads the last run's two traces once (the bar: compare <= 2x that), then runs `compare` in a
child process of each tree on its own pair (a tree that reads another trace schema gets its own copy of
the same tensors). Prints each run, the medians and each tree's time against the first's. Asserts nothing.

    git worktree add /tmp/old <commit>
    python benchmarks/compare_trees.py --run old /tmp/old A_OLD B_OLD --run new . A B [--rounds 3] [--no-replay]

benchmarks/compare_large.py writes a large-v3-shaped pair (--keep keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from speed import read_all

CHILD = """
import json, sys, time
from whisperdiff.analysis.compare import compare
start = time.perf_counter()
result = compare(sys.argv[1], sys.argv[2], replay=sys.argv[3] == "replay")
print(json.dumps({"seconds": time.perf_counter() - start, "first": result.first_divergence,
                  "peak_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=4, action="append", metavar=("LABEL", "TREE", "A", "B"), required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-replay", action="store_true")
    args = parser.parse_args()
    runs = {label: (tree, a, b) for label, tree, a, b in args.run}
    last = args.run[-1]
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    reads = []
    for r in range(args.rounds):
        reads.append(read_all([Path(last[2]), Path(last[3])]))
        for name, (tree, a, b) in runs.items():
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve() / "src")}
            done = subprocess.run(
                [sys.executable, "-c", CHILD, a, b, "no" if args.no_replay else "replay"],
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            seconds[name].append(figures["seconds"])
            print(
                f"round {r}: {name} ({tree}): {figures['seconds']:.2f} s, peak {figures['peak_mb']:.0f} MB, "
                f"first divergence {figures['first']}",
                flush=True,
            )
    read = statistics.median(reads)
    print(f"reading both traces (median of {args.rounds}): {read:.2f} s")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name}: median {median:.2f} s, compare / read {median / read:.2f}x (goal <= 2)")
    first = statistics.median(seconds[args.run[0][0]])
    for name, values in seconds.items():
        print(f"{args.run[0][0]} / {name}: {first / statistics.median(values):.2f}x")


if __name__ == "__main__":
    main()
