"""The sweep on Ray: each worker is an actor (a `SweepWorker`) that loads its models and compiles its
MAX graphs once, then takes jobs; records stream back to the driver as they finish, and only the
driver appends them to the table (so a job is recorded once whatever happens to workers).

    RayEngine(spec)                      # a local Ray started for the sweep (one worker per CPU)
    RayEngine(spec, address="ray://h:10001")   # or RAY_ADDRESS: an existing cluster

A worker that dies mid-job (killed, out of memory, its node gone) is restarted by Ray and its job is
handed out again; a job whose worker dies MAX_ATTEMPTS times is recorded as an error. GPU jobs ask Ray
for one GPU per worker. On a cluster, `spec.out` should be a filesystem every node sees (kept traces
are written by the workers). `pip install whisperdiff[ray]`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator

from whisperdiff.errors import WhisperdiffError
from whisperdiff.experiments.sweep import Job, SweepSpec, SweepWorker

MAX_ATTEMPTS = 3
PROBES = 300  # seconds to wait for Ray to restart a dead worker
IN_FLIGHT = 2  # jobs queued per worker, so a worker never waits for the driver between jobs


def _ray():
    try:
        import ray
    except ImportError:
        raise WhisperdiffError(
            "--ray needs Ray: pip install 'whisperdiff[ray]' (pinned: pip install -c constraints.txt ray)"
        ) from None
    return ray


class RayEngine:
    def __init__(
        self,
        spec: SweepSpec,
        *,
        address: str | None = None,
        workers: int | None = None,
        gpu: bool = False,
        num_cpus: int | None = None,
        gpus_per_worker: float = 1.0,
    ):
        """address: a cluster (else RAY_ADDRESS, else a local Ray with num_cpus). workers: actors (default:
        one per GPU for GPU sweeps, else one per CPU). gpus_per_worker below 1 packs several workers on one
        GPU (a job keeps its GPU busy a small part of its time: docs/sweep.md). Starts Ray if it is not
        running in this process."""
        ray = _ray()
        self.spec, self.gpu = spec, gpu
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            address = address or os.environ.get("RAY_ADDRESS") or None
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            try:
                if address in (None, "local"):
                    ray.init(num_cpus=num_cpus or workers or os.cpu_count(), **kwargs)
                else:
                    ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise WhisperdiffError(
                    f"cannot reach the Ray cluster at {address!r} ({str(e)[:160]}); start it or drop the address"
                ) from None
        resources = ray.cluster_resources()
        kind = "GPU" if gpu else "CPU"
        n = workers or max(1, int(resources.get(kind, 0) / (gpus_per_worker if gpu else 1)))
        if gpu and resources.get("GPU", 0) < 1:
            raise WhisperdiffError("the Ray cluster has no GPU for a --device gpu sweep; use --device cpu")
        actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker if gpu else 0, max_restarts=-1, max_task_retries=0)(
            SweepWorker
        )
        self.workers = [actor.remote(spec) for _ in range(n)]
        self._pids = None

    def pids(self) -> list[int]:
        """The workers' process ids (tests kill one)."""
        ray = _ray()
        self._pids = ray.get([w.pid.remote() for w in self.workers])
        return self._pids

    def warm(self, configs) -> None:
        """Every worker loads its models and compiles its graphs now."""
        ray = _ray()
        ray.get([w.warm.remote(list(configs)) for w in self.workers])

    def run(self, jobs: list[Job], close: bool = True) -> Iterator[dict]:
        """Records as jobs finish (in finishing order); each job yields exactly one record."""
        ray = _ray()
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque(jobs)
        attempts: dict[str, int] = {}
        running: dict = {}  # object ref -> (worker index, job), or (worker index, None) for a probe
        load = [0] * len(self.workers)
        down: dict[int, int] = {}  # worker index -> probes sent while Ray restarts it

        def submit(i: int) -> None:
            while queue and load[i] < IN_FLIGHT and i not in down:
                job = queue.popleft()
                running[self.workers[i].run.remote(job)] = (i, job)
                load[i] += 1

        def submit_all() -> None:
            for k in range(len(self.workers)):
                submit(k)

        try:
            submit_all()
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                ref = ready[0]
                i, job = running.pop(ref)
                try:
                    result = ray.get(ref)
                except (RayActorError, RayTaskError) as e:  # the worker died (under this job, or being probed)
                    if job is None:
                        if down[i] >= PROBES:  # it does not come back: its jobs go to the others
                            continue
                        time.sleep(1.0)
                        down[i] += 1
                        running[self.workers[i].pid.remote()] = (i, None)
                        continue
                    load[i] -= 1
                    if i not in down:  # probe until Ray has restarted it; meanwhile the others take its jobs
                        down[i] = 1
                        running[self.workers[i].pid.remote()] = (i, None)
                    attempts[job.id] = attempts.get(job.id, 0) + 1
                    if attempts[job.id] < MAX_ATTEMPTS:
                        queue.appendleft(job)
                        submit_all()
                        continue
                    result = _lost(job, f"its Ray worker died {MAX_ATTEMPTS} times running it: {type(e).__name__}")
                if job is None:  # a probe answered: the worker is back
                    down.pop(i, None)
                    submit_all()
                    continue
                load[i] -= 1
                submit_all()
                yield result
            for job in queue:  # every worker gone for good
                yield _lost(job, "no Ray worker left to run it")
        finally:
            if close:
                self.close()

    def close(self) -> None:
        ray = _ray()
        try:  # each worker removes the reference trace it still holds
            ray.get([w.finish.remote() for w in self.workers], timeout=60)
        except Exception:  # a dead or hung worker leaves it; the next sweep into OUT replaces it
            pass
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []
        if self.started_ray:
            ray.shutdown()


def _lost(job: Job, why: str) -> dict:
    return {
        "job_id": job.id,
        "clip": job.clip,
        "clip_name": os.path.basename(job.clip),
        "config": job.config.key,
        "inject": "+".join(job.config.inject),
        "window": job.window,
        "model": job.config.model,
        "dtype": job.config.dtype,
        "device": job.config.device,
        **dict(job.properties),
        "status": "error",
        "passed": False,
        "error": why,
    }
