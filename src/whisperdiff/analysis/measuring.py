"""The matched ops' metrics, measured a few ops ahead of compare's loop on worker threads.

compare goes through the ops in order and needs each op's metrics before it decides anything about it
(diverged? replay?). Those metrics are most of a clean compare's time: every byte of both traces read,
checked against its digest (store.trace) and measured (measure.metrics). Here each op is one job on a
worker, while compare's own thread does its Python for the ops before. A job reads A's and B's op a chunk
at a time into the worker's two small buffers (Trace.chunks: each piece hashed as it is read) and measures
each chunk while it is still in cache (OpMeasure), so the op crosses memory once. Mapping each op instead,
then hashing it and measuring it in passes of their own, paid a page fault per 16 pages, the unmapping,
and two more trips through memory: a clean large-v3 compare took 2.5x the time to read both traces on two
cores, and takes 1.5x this way (docs/sweep.md). A job hands back numbers only.

An op that cannot be read that way (B stored in another layout, a time axis behind a longer one, a row
past CHUNK_LIMIT) is mapped and measured whole on its worker. Once an op diverges and the replay begins,
compare calls `close`: the replay needs the memory, and the ops after it are measured when compare asks for
them, on its own thread, mapped in order (Trace's digest thread hashes ahead and unmaps). A job's error (a damaged op) is raised where compare asks for that op, so the first damaged op
in order is the one named.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from whisperdiff.measure.metrics import OpMeasure, op_metrics
from whisperdiff.store.trace import Trace, release

CHUNK_LIMIT = 16 << 20  # a chunk larger than this a side (one very long row) is mapped instead
WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class OpJob:
    """One matched op: A's name, B's name, B's conversion to A's layout (None: B is stored as A is) and
    op_metrics' keywords (layout, atol, rtol, onepass)."""

    name: str
    b_name: str
    view: Callable[[np.ndarray], np.ndarray] | None
    options: dict


class MeasureAhead:
    """`get(op)` gives the op's metrics (op_metrics' dict), measured ahead in the jobs' order (after `close`,
    an op not measured ahead is measured on the caller's thread)."""

    def __init__(self, ta: Trace, tb: Trace, jobs: list[OpJob], *, ready: Future | None = None):
        """ready: a Future to wait for before the first metrics (the one-pass kernel loading)."""
        self._ta, self._tb, self._ready = ta, tb, ready
        self._jobs = jobs
        self._job = {job.name: job for job in jobs}
        self._next = 0  # the next job to submit
        self._futures: dict[str, Future] = {}
        workers = min(WORKERS, max(1, len(jobs)))
        self._buffers: queue.SimpleQueue = queue.SimpleQueue()  # a worker's pair of chunk buffers, grown as needed
        for _ in range(workers):
            self._buffers.put((np.empty(0, np.uint8), np.empty(0, np.uint8)))
        self._window = 2 * workers  # jobs in flight: a worker never waits for compare's thread
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(workers, thread_name_prefix="whisperdiff-measure")
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and self._next < len(self._jobs) and len(self._futures) < self._window:
            job = self._jobs[self._next]
            self._next += 1
            self._futures[job.name] = self._pool.submit(self._measure, job)

    def _measure(self, job: OpJob) -> dict:
        ta, tb = self._ta, self._tb
        op_a, op_b = ta.info(job.name), tb.info(job.b_name)
        m = OpMeasure(op_a["shape"], (op_a["dtype"], op_b["dtype"]), **job.options)
        sizes = [m.rows * m.rest * np.dtype(op["dtype"]).itemsize for op in (op_a, op_b)]
        if job.view is not None or not m.contiguous or op_a["nbytes"] == 0 or max(sizes) > CHUNK_LIMIT:
            a, b = ta.read(job.name), tb.read(job.b_name)
            self._wait_ready()
            return op_metrics(a, b if job.view is None else job.view(b), **job.options, parallel=False)
        buffers = self._buffers.get()
        try:
            buffers = tuple(
                buf if buf.size >= n else np.empty(n, np.uint8) for buf, n in zip(buffers, sizes, strict=True)
            )
            dtypes = np.dtype(op_a["dtype"]), np.dtype(op_b["dtype"])
            pieces = zip(
                ta.chunks(job.name, sizes[0], buffers[0]), tb.chunks(job.b_name, sizes[1], buffers[1]), strict=True
            )
            for start, (x, y) in zip(m.starts, pieces, strict=True):  # strict: both files read to their end
                self._wait_ready()
                m.add(start, m.sums(x.view(dtypes[0]).reshape(-1, m.rest), y.view(dtypes[1]).reshape(-1, m.rest)))
        finally:
            self._buffers.put(buffers)
        return m.result(lambda: (m.rows_of(ta.read(job.name)), m.rows_of(tb.read(job.b_name))))

    def _wait_ready(self) -> None:
        if self._ready is not None:
            self._ready.result()

    def get(self, name: str) -> dict:
        future = self._futures.pop(name, None)
        self._fill()
        if future is not None and not future.cancelled():  # after close, a job is either done or cancelled
            return future.result()
        job = self._job[name]  # not measured ahead: the replay has begun
        b = np.asarray(self._tb[job.b_name])
        both = [self._ta[name], b if job.view is None else job.view(b)]
        m = op_metrics(*both, **job.options)
        release(both)  # unmapped on the digest thread
        return m

    def close(self) -> None:
        """Stop reading ahead and free the buffers (ops already measured are still given by `get`)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)
            while not self._buffers.empty():
                self._buffers.get()
