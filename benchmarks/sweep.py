"""The sweep's engines on this machine: jobs/s in process against a local 2-worker Ray, Ray's per-job
overhead, and peak memory per worker. Rounds interleave the two engines (in process, then Ray, then in
process again...), each round on a fresh output folder, workers warmed first (models loaded, graphs
compiled), so the figures are steady-state throughput. Prints figures; asserts nothing.

    python benchmarks/sweep.py [--rounds 2] [--clips 4] [--transcribe]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

CLIPS = ["short-yes", "speech-06", "loud-sine", "noise-white", "speech-00", "music-chord", "short-okay", "speech-10"]


class InProcess:
    """The in-process engine with a worker warmed before the clock starts (run_sweep's own is cold)."""

    def __init__(self, worker):
        self.worker = worker

    def run(self, jobs):
        for job in jobs:
            yield self.worker.run(job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clips", type=int, default=4, help=f"clips per sweep (at most {len(CLIPS)})")
    parser.add_argument("--transcribe", action="store_true", help="decode both sides too (as a default sweep does)")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    import ray

    from whisperdiff.experiments.sweep import Config, SweepSpec, SweepWorker, run_sweep
    from whisperdiff.experiments.sweep_ray import RayEngine
    from whisperdiff.inputs.corpus import make_corpus

    root = args.dir or Path(tempfile.mkdtemp(prefix="whisperdiff-sweep-bench-"))
    clips = make_corpus(root / "corpus", names=CLIPS[: args.clips])
    configs = [Config()]
    spec = lambda name: SweepSpec(out=root / name, transcribe=args.transcribe, keep="none")  # noqa: E731

    t0 = time.perf_counter()
    local = SweepWorker(spec("warm"))
    local.warm(configs)
    warm_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started_ray = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = RayEngine(spec("ray-warm"), workers=2)
    engine.warm(configs)
    warm_ray = time.perf_counter() - t0
    # Ray's own cost of one call to a warm actor (no work): the floor of its per-job overhead.
    engine.pids()
    t0 = time.perf_counter()
    for _ in range(50):
        engine.pids()
    call_ms = (time.perf_counter() - t0) / 100 * 1000  # each pids() is one call to each of 2 workers

    rates = {"in process": [], "ray, 2 workers": []}
    job_seconds = {"in process": [], "ray, 2 workers": []}
    overhead = []
    for r in range(args.rounds):
        for name in rates:
            s = spec(f"round{r}-{name.split(',')[0].replace(' ', '-')}")
            # Each round from scratch: no reference trace carried over from the last round.
            if name == "in process":
                local.finish()
                run = InProcess(local)
            else:
                ray.get([w.finish.remote() for w in engine.workers])
                run = engine
            t0 = time.perf_counter()
            result = run_sweep(s, clips, configs, engine=_Bound(run, s))
            wall = time.perf_counter() - t0
            records = result.records.to_dict("records")
            busy = sum(rec["seconds"] for rec in records)
            rates[name].append(len(records) / wall)
            job_seconds[name].append(busy / len(records))
            if name != "in process":  # time the workers were not running a job, per job
                overhead.append((wall * len(engine.workers) - busy) / len(records))
            print(
                f"round {r}: {name:15} {len(records)} jobs in {wall:6.1f} s = {len(records) / wall:.3f} jobs/s "
                f"(a job itself {busy / len(records):.2f} s)",
                flush=True,
            )
    peaks = ray.get([w.peak_rss_mb.remote() for w in engine.workers])
    engine.close()
    ray.shutdown()

    print()
    print(
        f"warm-up: in-process worker {warm_local:.1f} s; Ray start {started_ray:.1f} s + 2 workers warm {warm_ray:.1f} s"
    )
    for name in rates:
        print(
            f"{name:15} jobs/s median {statistics.median(rates[name]):.3f} (rounds: "
            f"{', '.join(f'{x:.3f}' for x in rates[name])}); a job itself {statistics.median(job_seconds[name]):.2f} s"
        )
    ratio = statistics.median(rates["ray, 2 workers"]) / statistics.median(rates["in process"])
    print(f"ray / in process: {ratio:.2f}x on {len(CLIPS[: args.clips])} clips")
    print(
        f"Ray per-job overhead: {call_ms:.2f} ms per call to a warm actor; worker time outside jobs "
        f"{statistics.median(overhead):.2f} s per job (dispatch, result transfer, start of each sweep)"
    )
    print(
        f"peak memory: in-process driver+worker {local.peak_rss_mb():.0f} MB; per Ray worker "
        f"{', '.join(f'{p:.0f} MB' for p in peaks)}"
    )


class _Bound:
    """An engine for run_sweep: the warm in-process worker or the warm Ray engine, left open between rounds."""

    def __init__(self, engine, spec):
        self.engine, self.spec = engine, spec

    def run(self, jobs):
        if isinstance(self.engine, InProcess):
            return self.engine.run(jobs)
        return self.engine.run(jobs, close=False)


if __name__ == "__main__":
    main()
