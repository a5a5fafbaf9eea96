"""What verifying every tensor's digest (XXH3-128) while streaming costs `compare` (issue 13's bar: at most +10 %).

Traces the real tiny.en pair with torch (or takes two traces), then runs `compare` on them with digest
verification (the default, Trace(path)) and without (Trace(path, verify=False): headers, sizes and
file kinds are still checked), interleaved round by round, each run in-process on fresh Trace
objects. Prints the median wall and CPU time of each and the ratio. Asserts nothing.

    python benchmarks/verify_cost.py [--rounds 5] [--no-replay] [A B]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="*", type=Path, help="A and B (default: trace tiny.en twice with torch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-replay", action="store_true", help="compare with replay=False (the metrics alone)")
    args = parser.parse_args()

    import whisperdiff as wd
    from whisperdiff.store.trace import Trace

    with tempfile.TemporaryDirectory(prefix="whisperdiff-verify-") as tmp:
        if args.traces:
            a, b = args.traces
        else:
            model = wd.load_model()
            a = wd.trace("torch", model=model, out=Path(tmp) / "a").path
            b = wd.trace("torch", model=model, out=Path(tmp) / "b").path
        replay = not args.no_replay
        model = wd.load_model() if replay else None  # loaded once, outside the timings
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        wd.compare(Trace(a), Trace(b), replay=replay, model=model)  # warm-up: imports, page cache
        for _ in range(args.rounds):
            for verify in (True, False):
                wall, cpu = time.perf_counter(), time.process_time()
                c = wd.compare(Trace(a, verify=verify), Trace(b, verify=verify), replay=replay, model=model)
                times[verify].append((time.perf_counter() - wall, time.process_time() - cpu))
        size = (Trace(a).nbytes + Trace(b).nbytes) / 1e6
        print(
            f"compare {a.name} vs {b.name} ({size:.0f} MB of tensors, replay={replay}, {len(c.table)} ops), "
            f"{args.rounds} interleaved rounds, medians:"
        )
        med = {v: (statistics.median(t[0] for t in times[v]), statistics.median(t[1] for t in times[v])) for v in times}
        for verify in (False, True):
            label = "verified (digest while streaming)" if verify else "not verified                     "
            print(f"  {label}  wall {med[verify][0]:.3f} s   cpu {med[verify][1]:.3f} s")
        print(
            f"  cost of verification: wall {med[True][0] / med[False][0] - 1:+.1%}, "
            f"cpu {med[True][1] / med[False][1] - 1:+.1%}"
        )


if __name__ == "__main__":
    main()
