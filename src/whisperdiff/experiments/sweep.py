"""A sweep: a reference and a candidate over a corpus, one job per (clip window, config).

    from whisperdiff.experiments.sweep import Config, SweepSpec, run_sweep
    spec = SweepSpec(a="torch", b="max", out="sweeps/nightly")
    result = run_sweep(spec, "corpus/", [Config(dtype="float32"), Config(dtype="float16")])
    result.records          # one row per job: status, first divergence, findings, WER, clip properties

A config is model x dtype x device (the candidate's dtype; the reference runs in float32 unless
`a_dtype=None`). Each job traces both sides through a `Session` (model loaded and graph compiled once
per config, not per job), compares them against the tolerances of its dtype, and keeps a compact record
(sweep_table.py): per-op metrics, findings, first divergence, both transcripts and the WER, a small golden
sample of each side. Full traces stay only where `keep` says. Records are appended to one table as jobs
finish, so a rerun skips what is done; a job that fails is recorded with its error and never stops the
others. In process by default; `engine="ray"` runs the same `SweepWorker` as Ray actors (sweep_ray.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from whisperdiff.analysis.heap import peak_mb
from whisperdiff.errors import WhisperdiffError
from whisperdiff.experiments.sweep_table import SweepTable, job_id
from whisperdiff.inputs.corpus import clip_properties, list_corpus

KEEP = ("divergent", "all", "none")
GOLDEN_OP, GOLDEN_SAMPLES = "ln_post", 32  # the small golden sample kept of each side
TOP_FINDINGS = 3


@dataclass(frozen=True)
class Config:
    """What one set of jobs runs on: model spec, the candidate's dtype, device, and any porting bugs
    planted in the candidate (so one sweep holds the clean port and planted bugs on the same references)."""

    model: str = "default"
    dtype: str = "float32"
    device: str = "cpu"
    inject: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.model}/{self.dtype}/{self.device}" + "".join(f"+{f}" for f in self.inject)

    @classmethod
    def parse(cls, text: str) -> Config:
        """`[MODEL/]DTYPE[/DEVICE][+FAULT]...`, e.g. `float16`, `tiny.en/float32/cpu+fp16-mel-overflow`."""
        base, *inject = text.strip().split("+")
        parts = [p for p in base.split("/") if p]
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise WhisperdiffError(f"--config {text!r}: write [MODEL/]DTYPE[/DEVICE][+FAULT]..., e.g. float16")
        if len(parts) == 1:
            parts = ["default", parts[0]]
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "cpu", tuple(f for f in inject if f))

    @property
    def tolerances(self) -> str:
        """The shipped tolerances a job of this dtype is held to."""
        return "float32" if self.dtype in ("float32", "float64") else "half"

    @property
    def needs_gpu(self) -> bool:
        return self.device in ("gpu", "cuda")


@dataclass(frozen=True)
class Job:
    clip: str
    window: int
    config: Config
    properties: tuple = ()  # (name, value) pairs of the clip's properties (corpus.clip_properties)

    @property
    def id(self) -> str:
        return job_id(self.clip, self.window, self.config.key)


@dataclass
class SweepSpec:
    """What every job of a sweep does; picklable, so Ray actors get it as is."""

    out: str | Path
    a: str = "torch"
    b: str = "max"
    a_dtype: str | None = "float32"  # the reference's dtype; None: the config's
    keep: str = "divergent"
    taps: str = "default"
    transcribe: bool = True

    def __post_init__(self):
        if self.keep not in KEEP:
            raise WhisperdiffError(f"--keep {self.keep!r} is not one of {', '.join(KEEP)}")
        self.out = str(self.out)


@dataclass
class SweepResult:
    out: Path
    records: object  # pandas DataFrame, one row per job (the last record of each)
    ran: int  # jobs run by this call (the others were done before: resumed)
    skipped: int
    seconds: float
    engine: str
    errors: list[str] = field(default_factory=list)


def plan_jobs(clips: list[str | Path], configs: list[Config]) -> list[Job]:
    """One job per clip window per config, clip by clip (a worker traces a clip's reference once for all
    its configs). A clip that cannot be read still gets one job (window 0): its error is its record."""
    from whisperdiff.inputs.audio import load_audio

    per_clip = []
    for clip in clips:
        try:
            props = clip_properties(load_audio(clip)[0])
        except WhisperdiffError:
            props = {}
        per_clip.append((str(clip), tuple(props.items())))
    return [
        Job(clip, w, config, props)
        for clip, props in per_clip
        for w in range(dict(props).get("n_windows", 1))
        for config in configs
    ]


class SweepWorker:
    """Runs jobs: one Session per side and config, made on the first job of that config (or `warm`) and
    reused, so a model is loaded and a MAX graph compiled once per worker, not per job. A Ray actor is
    this class (sweep_ray.py)."""

    def __init__(self, spec: SweepSpec):
        self.spec, self.sessions, self.models = spec, {}, {}
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._reference = None  # (key, trace, kept): the last reference trace, reused by the clip's next config

    def finish(self) -> None:
        """Remove the reference trace still held, unless a job kept it."""
        if self._reference is not None and not self._reference[2]:
            shutil.rmtree(self._reference[1].path, ignore_errors=True)
        self._reference = None

    def pid(self) -> int:
        return os.getpid()

    def peak_rss_mb(self) -> float:
        """This process's peak resident memory in MB (benchmarks/sweep.py reports it per Ray worker)."""
        return peak_mb()

    def warm(self, configs: list[Config]) -> list[str]:
        """Load every config's model and compile its graphs now (before jobs are timed)."""
        for config in configs:
            self.session("a", config), self.session("b", config)
        return [c.key for c in configs]

    def session(self, side: str, config: Config):
        from whisperdiff.capture.session import Session
        from whisperdiff.inputs.models import load_model

        spec = self.spec
        dtype = (spec.a_dtype or config.dtype) if side == "a" else config.dtype
        inject = () if side == "a" else config.inject
        key = (side, config.model, dtype, config.device, inject)
        if key not in self.sessions:
            if config.model not in self.models:
                self.models[config.model] = load_model(None if config.model == "default" else config.model)
            impl, inject = (spec.a, []) if side == "a" else (spec.b, list(config.inject))
            self.sessions[key] = Session(
                impl, model=self.models[config.model], device=config.device, dtype=dtype, taps=spec.taps, inject=inject
            )
        return self.sessions[key]

    def run(self, job: Job) -> dict:
        """The job's record; any failure becomes a record with status "error" (never an exception)."""
        t0 = time.perf_counter()
        record = {
            "job_id": job.id,
            "clip": job.clip,
            "clip_name": Path(job.clip).name,
            "window": job.window,
            "model": job.config.model,
            "dtype": job.config.dtype,
            "device": job.config.device,
            "a": self.spec.a,
            "b": self.spec.b,
            "inject": "+".join(job.config.inject),
            "config": job.config.key,
            **dict(job.properties),
        }
        where = Path(self.spec.out) / "traces" / _safe(job.id)
        try:
            record.update(self._run(job, where))
        except BaseException as e:  # a job's failure is its record; only an interrupt stops the sweep
            if isinstance(e, KeyboardInterrupt):
                raise
            shutil.rmtree(where, ignore_errors=True)
            last = traceback.extract_tb(e.__traceback__)[-1:] if not isinstance(e, WhisperdiffError) else []
            at = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
            record.update(status="error", passed=False, error=f"{type(e).__name__}: {e}{at}"[:2000])
        record.update(
            seconds=round(time.perf_counter() - t0, 3),
            worker=self.worker,
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        return record

    def _run(self, job: Job, where: Path) -> dict:
        from whisperdiff.analysis.compare import compare
        from whisperdiff.measure.tolerances import load_tolerances

        spec, config = self.spec, job.config
        shutil.rmtree(where, ignore_errors=True)  # what a killed attempt left behind
        sa, sb = self.session("a", config), self.session("b", config)
        t0 = time.perf_counter()
        ta = self._reference_trace(sa, job)
        t1 = time.perf_counter()
        tb = sb.trace(audio=job.clip, window=job.window, out=where / "b", transcribe=spec.transcribe)
        t2 = time.perf_counter()
        tolerance = load_tolerances(config.tolerances)
        c = compare(ta, tb, tolerance=tolerance, replay=False)
        if c.first_divergence is not None or c.op_failures:  # the replay names the bug; only worth it here
            c = compare(ta, tb, tolerance=tolerance, replay=True, model=sb.loaded)
        t3 = time.perf_counter()
        passed = c.first_divergence is None and not c.op_failures and c.comparable
        keep = spec.keep == "all" or (spec.keep == "divergent" and not passed)
        summary, golden, a_path = _summary(c), _golden(ta, tb), str(ta.path)
        del c, ta, tb  # memory maps of the traces, closed before they are removed
        if keep:
            self._reference = (*self._reference[:2], True)
        else:
            shutil.rmtree(where, ignore_errors=True)
        return {
            "status": "pass" if passed else "diverged",
            "passed": bool(passed),
            "error": "",
            "tolerances": config.tolerances,
            **summary,
            "golden": golden,
            "trace_a": a_path if keep else "",
            "trace_b": str(where / "b") if keep else "",
            "seconds_a": round(t1 - t0, 3),
            "seconds_b": round(t2 - t1, 3),
            "seconds_compare": round(t3 - t2, 3),
        }

    def _reference_trace(self, session, job: Job):
        """The reference trace of this clip window, traced once for all the configs that share it."""
        spec, config = self.spec, job.config
        key = (job.clip, job.window, config.model, spec.a_dtype or config.dtype, config.device)
        if self._reference is not None and self._reference[0] == key:
            return self._reference[1]
        self.finish()
        name = _safe(f"{job.clip}#w{job.window}@{config.model}-{spec.a}-{spec.a_dtype or config.dtype}-{config.device}")
        out = Path(spec.out) / "traces" / "reference" / str(os.getpid()) / name  # each worker its own
        shutil.rmtree(out, ignore_errors=True)
        trace = session.trace(audio=job.clip, window=job.window, out=out, transcribe=spec.transcribe)
        self._reference = (key, trace, False)
        return trace


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[-150:]


def _summary(c) -> dict:
    """The compact part of a Comparison: per-op metrics, worst op, first divergence, findings, transcripts."""
    table = c.table
    ops = {}
    for row in table.to_dict("records"):
        if row.get("status") not in ("ok", "diverged"):
            continue
        ops[row["op"]] = {
            k: _num(row.get(k)) for k in ("rel_l2", "cosine", "max_abs", "introduced_rel_l2") if k in row
        } | {"failed": bool(row.get("failures")) or bool(row.get("diverged"))}
    measured = {op: m["rel_l2"] for op, m in ops.items() if m.get("rel_l2") is not None}
    worst = max(measured, key=measured.get) if measured else None
    findings = [
        {"kind": f.kind, "op": f.op, "confidence": round(float(f.confidence), 3), "message": f.message[:400]}
        for f in c.findings[:TOP_FINDINGS]
    ]
    t = c.transcripts or {}
    return {
        "first_divergence": c.first_divergence or "",
        "worst_op": worst or "",
        "worst_rel_l2": measured.get(worst) if worst else None,
        "failed_ops": sum(1 for m in ops.values() if m["failed"]),
        "finding": findings[0]["kind"] if findings else "",
        "finding_op": (findings[0]["op"] or "") if findings else "",
        "findings": findings,
        "ops": ops,
        "transcript_a": t.get("a"),
        "transcript_b": t.get("b"),
        "wer": _num(t.get("wer")),
    }


def _num(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else (f if abs(f) != float("inf") else None)


def _golden(ta, tb) -> dict:
    """A few fixed samples of each side's GOLDEN_OP (seeded positions) plus its mean and std."""
    if GOLDEN_OP not in ta or GOLDEN_OP not in tb:
        return {}
    out = {"op": GOLDEN_OP}
    for side, t in (("a", ta), ("b", tb)):
        x = np.asarray(t[GOLDEN_OP]).reshape(-1)
        idx = np.sort(np.random.default_rng(0).choice(x.size, size=min(GOLDEN_SAMPLES, x.size), replace=False))
        out[side] = {
            "index": idx.tolist() if side == "a" else None,
            "values": [float(v) for v in x[idx]],
            "mean": float(x.mean(dtype=np.float64)),
            "std": float(x.std(dtype=np.float64)),
        }
    return out


def run_sweep(
    spec: SweepSpec,
    corpus: str | Path | list,
    configs: list[Config],
    *,
    engine="process",
    retry_errors: bool = False,
    on_record: Callable[[dict], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_op: Callable[[str], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run every job not done yet (records in `spec.out`), append each record as it finishes.

    corpus: a folder, a list file or a list of paths. engine: "process" (a SweepWorker here) or an
    engine object with `run(jobs) -> records`, e.g. `sweep_ray.RayEngine(spec)` (closed when done).
    on_record(record) streams each record as it is appended. Progress takes the library's one callback
    shape: on_total(jobs to run), on_status(what was done before), on_op("clip wN config: status") per job."""
    if not configs:
        raise WhisperdiffError("a sweep needs at least one config (model x dtype x device)")
    from whisperdiff.capture.faults import get_faults

    for config in configs:  # an unknown fault is an error before any job runs
        get_faults(list(config.inject))
    t0 = time.perf_counter()
    clips = corpus if isinstance(corpus, list) else list_corpus(corpus)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    table = SweepTable(out)
    jobs = plan_jobs(clips, configs)
    done = table.done(retry_errors=retry_errors)
    todo = [j for j in jobs if j.id not in done]
    if on_total is not None:
        on_total(len(todo))
    if on_status is not None:
        on_status(f"{len(jobs) - len(todo)} of {len(jobs)} done before")
    if engine == "process":
        worker = SweepWorker(spec)

        def in_process():
            try:
                yield from (worker.run(job) for job in todo)
            finally:
                worker.finish()

        records: Iterator[dict] = in_process()
        name = "process"
    elif hasattr(engine, "run"):
        records, name = engine.run(todo), type(engine).__name__
    else:
        raise WhisperdiffError(f"unknown engine {engine!r}; use 'process' or a RayEngine")
    ran = 0
    for record in records:
        table.append(record)
        ran += 1
        if on_record is not None:
            on_record(record)
        if on_op is not None:
            clip = Path(str(record.get("clip"))).name
            on_op(f"{clip} w{record.get('window')} {record.get('config', '')}: {record.get('status')}")
    frame = table.frame()
    errors = [f"{r['job_id']}: {r['error']}" for r in frame.to_dict("records") if r.get("status") == "error"]
    return SweepResult(out, frame, ran, len(jobs) - len(todo), time.perf_counter() - t0, name, errors)
