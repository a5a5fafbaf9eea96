"""Every speed goal of issue 17 in one run: start-up, trace, compare, report, the encoders, a large compare.

Prints figures; asserts nothing. Configurations are interleaved over rounds (A B C ... A B C ...)
so that machine noise (other processes, thermal state) falls on all of them alike; each figure is
the median over rounds with its spread (min-max), and ratios are of medians from this same run.

- Commands run as a user runs them: the installed `whisperdiff` entry point (next to this Python,
  not a pyenv shim), wall time from process start to exit, peak RSS of that process.
- The encoders (MAX untapped, MAX default taps, openai-whisper's torch) each live in their own
  worker process, loaded and warmed up once; the parent asks each in turn for one pass per round.
- The large compare writes two synthetic traces with large-v3's shapes and default taps
  (benchmarks/compare_large.py), then per round reads both from disk and compares them.

    python benchmarks/speed.py                    # 3 rounds, 10 encoder passes per worker per round
    python benchmarks/speed.py --rounds 5 --skip-large
    python benchmarks/speed.py --json

The MAX graphs must be in MAX's cache already (run `whisperdiff trace --impl max` once, and
`python benchmarks/encoder.py --skip-cold`): a cold compile is not what this measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (label, goal text, test on the median or ratio): the table.
GOALS = {
    "compare": ("<= 1.5 s", lambda s: s <= 1.5),
    "compare --no-replay": ("-", None),
    "report": ("<= 4 s", lambda s: s <= 4.0),
    "trace --impl max (warm)": ("<= 4 s", lambda s: s <= 4.0),
    "trace --impl torch": ("<= 3 s", lambda s: s <= 3.0),
    "--help": ("<= 0.5 s", lambda s: s <= 0.5),
}


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "whisperdiff"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "whisperdiff"]


def timed_process(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process, which must succeed.

    Peak RSS comes from /usr/bin/time where it exists: a child forked from this (large) process would
    otherwise report this process's size, which Linux carries across exec."""
    gnu_time = Path("/usr/bin/time")
    wrapped = [str(gnu_time), "-f", "WDTIME %M", *cmd] if gnu_time.exists() else cmd
    start = time.perf_counter()
    proc = subprocess.Popen(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    lines = err.splitlines()
    if gnu_time.exists() and lines and lines[-1].startswith("Command exited with non-zero status"):
        lines = lines[:-1]
    peak = usage.ru_maxrss / 1024
    if lines and lines[-1].startswith("WDTIME "):
        peak = int(lines[-1].split()[1]) / 1024
    if code not in (0, 1):  # compare exits 1 when B diverges; that is a result, not a failure
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err[-2000:]}")
    return seconds, peak


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}"


# --------------------------------------------------------------------------------------------- encoders


def worker(config: str, model_spec: str) -> None:
    """One encoder, loaded and warmed up; then one timed pass per `go N` line on stdin (N passes, median back)."""
    from encoder import encoder_pass

    _, once, facts = encoder_pass(config, model_spec)
    if facts.get("cache_hit") is False:
        print(f"note: {config} compiled its graph ({facts['compile_seconds']:.0f} s)", file=sys.stderr)
    once()
    once()
    print("ready", flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line.split()[1])):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


class Worker:
    def __init__(self, config: str, model: str):
        cmd = [sys.executable, __file__, "--worker", config, "--model", model]
        self.config = config
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"encoder worker {config} failed to start")

    def passes(self, n: int) -> list[float]:
        self.proc.stdin.write(f"go {n}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# --------------------------------------------------------------------------------------------- large compare


def read_all(paths: list[Path]) -> float:
    """Seconds to read every file of these traces (from the page cache when they are warm in it)."""
    start = time.perf_counter()
    for root in paths:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                with open(f, "rb", buffering=0) as fh:
                    while fh.read(1 << 24):
                        pass
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=10, help="encoder passes per worker per round")
    parser.add_argument("--skip-large", action="store_true", help="skip the large-v3-sized compare (~9 GB on disk)")
    parser.add_argument("--layers", type=int, default=32, help="blocks of the large compare's traces")
    parser.add_argument("--dir", type=Path, default=None, help="where to write traces (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model)
        return

    from encoder import encoder_flops, sgemm_gflops

    root = Path(tempfile.mkdtemp(prefix="whisperdiff-speed-", dir=args.dir))
    wd_cmd = cli()
    env = {**os.environ, "TERM": "dumb"}
    samples: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}

    def record(label: str, seconds: float, peak: float | None = None) -> None:
        samples.setdefault(label, []).append(seconds)
        if peak is not None:
            rss.setdefault(label, []).append(peak)

    try:
        # The pair compare and report read: traced once, outside the timed rounds.
        ref, cand = root / "torch", root / "max"
        for impl, out in (("torch", ref), ("max", cand)):
            subprocess.run(
                [*wd_cmd, "trace", "--impl", impl, "-m", args.model, "-o", str(out)],
                check=True,
                capture_output=True,
                env=env,
            )
        commands = {
            "--help": lambda r: [*wd_cmd, "--help"],
            "trace --impl torch": lambda r: [
                *wd_cmd,
                "trace",
                "--impl",
                "torch",
                "-m",
                args.model,
                "-o",
                str(root / f"t{r}"),
            ],
            "trace --impl max (warm)": lambda r: [
                *wd_cmd,
                "trace",
                "--impl",
                "max",
                "-m",
                args.model,
                "-o",
                str(root / f"m{r}"),
            ],
            "compare": lambda r: [*wd_cmd, "compare", str(ref), str(cand)],
            "compare --no-replay": lambda r: [*wd_cmd, "compare", str(ref), str(cand), "--no-replay"],
            "report": lambda r: [*wd_cmd, "report", str(ref), str(cand), "-o", str(root / f"r{r}.html")],
        }
        workers = [Worker(c, args.model) for c in ("max-untapped", "max-default", "torch")]
        large = None
        if not args.skip_large:
            from compare_large import write_pair

            start = time.perf_counter()
            a, b, nbytes = write_pair(root / "large", args.layers)
            large = {"a": a, "b": b, "bytes": nbytes, "write_seconds": time.perf_counter() - start}
        for r in range(args.rounds):
            print(f"round {r + 1} of {args.rounds}", file=sys.stderr, flush=True)
            for label, cmd in commands.items():
                record(label, *timed_process(cmd(r), env))
            for w in workers:
                samples.setdefault(w.config, []).extend(w.passes(args.passes))
            if large is not None:
                record("large: read both traces", read_all([large["a"], large["b"]]))
                cmd = [sys.executable, str(HERE / "compare_large.py"), "--child", str(large["a"]), str(large["b"])]
                record("large: compare", *timed_process(cmd))
            for r_dir in (root / f"t{r}", root / f"m{r}"):
                shutil.rmtree(r_dir, ignore_errors=True)
        for w in workers:
            w.close()
        import whisperdiff as wd

        dims = wd.load_model(args.model).dims
        flops, limit = encoder_flops(dims), sgemm_gflops()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {
        "MAX untapped vs torch encoder (torch s / MAX s)": (
            med["torch"] / med["max-untapped"],
            ">= 1.0",
            lambda x: x >= 1.0,
        ),
        "MAX default taps / untapped": (med["max-default"] / med["max-untapped"], "<= 1.15", lambda x: x <= 1.15),
    }
    if large is not None:
        ratios["large compare / read both traces"] = (med["large: compare"] / med["large: read both traces"], "-", None)
    summary = {
        "model": args.model,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "median_seconds": med,
        "samples": samples,
        "peak_rss_mb": {k: max(v) for k, v in rss.items()},
        "ratios": {k: v[0] for k, v in ratios.items()},
        "encoder_gflop": flops / 1e9,
        "sgemm_gflops": limit,
        "large_trace_gb": large["bytes"] / 1e9 if large else None,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return

    print(f"whisperdiff speed, model {args.model}, {args.rounds} rounds interleaved, {os.cpu_count()} CPUs")
    print(f"{'what':44} {'median':>9} {'spread':>15} {'peak RSS':>9}  goal       met")
    for label, (goal, ok) in GOALS.items():
        s = med[label]
        met = "-" if ok is None else ("yes" if ok(s) else "NO")
        print(f"{label:44} {s:8.2f}s {spread(samples[label]):>15} {max(rss[label]):7.0f}MB  {goal:10} {met}")
    for k in ("max-untapped", "max-default", "torch"):
        s = med[k]
        print(
            f"encoder {k:36} {s:8.3f}s {spread(samples[k]):>15} {'':9}  {flops / s / 1e9:.0f} GFLOP/s, "
            f"{flops / s / 1e9 / limit:.0%} of the {limit:.0f} GFLOP/s sgemm limit"
        )
    if large is not None:
        for k in ("large: read both traces", "large: compare"):
            peak = f"{max(rss[k]):7.0f}MB" if k in rss else ""
            print(f"{k:44} {med[k]:8.2f}s {spread(samples[k]):>15} {peak:>9}")
        ok = max(rss["large: compare"]) <= 1024
        print(
            f"{'large: compare peak RSS':44} {max(rss['large: compare']):8.0f}MB {'':15} {'':9}  <= 1 GB     "
            f"{'yes' if ok else 'NO'}   ({large['bytes'] / 1e9:.2f} GB per trace, {args.layers} blocks)"
        )
    for label, (x, goal, ok) in ratios.items():
        met = "-" if ok is None else ("yes" if ok(x) else "NO")
        print(f"ratio {label:38} {x:8.2f}x {'':15} {'':9}  {goal:10} {met}")


if __name__ == "__main__":
    main()
