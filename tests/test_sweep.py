"""whisperdiff sweep: a port over a corpus, in process and on a real local Ray (no mock).

Small on purpose (CI time): three generated clips (a short word, a loud tone, a sentence) and one
unreadable file, tiny.en, the clean MAX float32 graph (the input-dependent faults act on the input).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from whisperdiff.capture.faults import FAULTS, INPUT_FAULTS
from whisperdiff.errors import WhisperdiffError
from whisperdiff.experiments.sweep import Config, SweepSpec, plan_jobs, run_sweep
from whisperdiff.experiments.sweep_table import MEASURED, SweepTable, by_property
from whisperdiff.inputs.corpus import clip_properties, list_corpus, make_corpus

CLIPS = ["short-yes", "loud-sine", "speech-06"]
CONFIGS = [Config(), Config(inject=("fp16-mel-overflow",)), Config(inject=("short-pad-zeros",))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A list file: the three clips and one file that is not audio (its jobs must fail, alone)."""
    root = tmp_path_factory.mktemp("corpus")
    paths = make_corpus(root / "clips", names=CLIPS)
    broken = root / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    listing = root / "corpus.txt"
    listing.write_text("\n".join([*(str(p.relative_to(root)) for p in paths), "broken.wav"]) + "\n")
    return listing


@pytest.fixture(scope="module")
def in_process(corpus, tmp_path_factory):
    """The sweep run in process, interrupted after 4 records, then resumed to the end."""
    out = tmp_path_factory.mktemp("sweep")
    spec = SweepSpec(out=out)
    seen = []

    def interrupt(record):
        seen.append(record["job_id"])
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, corpus, CONFIGS, on_record=interrupt)
    first = len(SweepTable(out).records())
    resumed = run_sweep(spec, corpus, CONFIGS)
    return spec, first, resumed


def test_corpus_make_writes_varied_clips_with_properties(corpus):
    clips = list_corpus(corpus)
    assert sorted(c.stem for c in clips) == sorted([*CLIPS, "broken"])
    index = json.loads((corpus.parent / "clips" / "corpus.json").read_text())
    short, loud, speech = (index[f"{n}.wav"] for n in CLIPS)
    assert short["kind"] == "short" and short["duration_s"] < 1.5 and short["padding_share"] > 0.95
    assert loud["kind"] == "loud" and loud["loudness_dbfs"] > -6 and speech["loudness_dbfs"] < -15
    assert 2.5 < speech["duration_s"] < 30 and speech["n_windows"] == 1 and 0 < speech["silence_share"] < 0.5
    import numpy as np

    long = clip_properties(np.zeros(16000 * 65, np.float32))
    assert long["n_windows"] == 3 and long["padding_share"] == 0.0 and long["silence_share"] == 1.0


def test_corpus_make_without_espeak_is_one_error(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # the venv's whisperdiff, no espeak-ng
    done = subprocess.run(
        [sys.executable, "-m", "whisperdiff", "corpus", "make", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: espeak-ng is not installed") and len(done.stderr.splitlines()) == 1


def test_plan_is_one_job_per_clip_window_and_config(tmp_path):
    import numpy as np

    from whisperdiff.inputs.corpus import _pcm16

    _pcm16(tmp_path / "long.wav", np.zeros(16000 * 40))
    jobs = plan_jobs([tmp_path / "long.wav"], [Config(), Config(dtype="float16")])
    assert [(j.window, j.config.dtype) for j in jobs] == [
        (0, "float32"),
        (0, "float16"),
        (1, "float32"),
        (1, "float16"),
    ]
    assert Config.parse("tiny.en/float16/gpu+short-pad-zeros") == Config(
        "tiny.en", "float16", "gpu", ("short-pad-zeros",)
    )
    with pytest.raises(WhisperdiffError, match="unknown fault"):
        run_sweep(SweepSpec(out=tmp_path / "o"), [tmp_path / "long.wav"], [Config(inject=("nope",))])


def test_sweep_in_process_resumes_records_failures_and_finds_input_faults(in_process):
    spec, first, resumed = in_process
    assert first == 4 and resumed.ran == 12 - 4 and resumed.skipped == 4
    frame = resumed.records
    assert len(frame) == 12 and frame["job_id"].is_unique
    lines = SweepTable(spec.out).records()
    assert len(lines) == 12  # nothing recorded twice
    measured = [r for r in lines if r["status"] != "error"]
    assert measured and all(set(MEASURED) <= set(r) for r in measured)  # the table's schema is what jobs write
    status = {(r["clip_name"], r["config"]): r for r in frame.to_dict("records")}
    for config in (c.key for c in CONFIGS):
        broken = status[("broken.wav", config)]
        assert broken["status"] == "error" and "WAV" in broken["error"]
    clean = [status[(f"{n}.wav", "default/float32/cpu")] for n in CLIPS]
    assert all(r["status"] == "pass" and r["passed"] for r in clean)  # MAX float32 within tolerance
    for r in clean:
        assert r["wer"] == 0.0 and r["transcript_a"] == r["transcript_b"]
        assert len(r["golden"]["a"]["values"]) == 32 and r["golden"]["a"]["values"] == pytest.approx(
            r["golden"]["b"]["values"], rel=1e-3, abs=1e-3
        )
        assert set(r["ops"]) >= {"mel", "conv1", "ln_post"} and r["ops"]["ln_post"]["rel_l2"] < 1e-4
        assert r["trace_a"] == "" and r["trace_b"] == ""  # --keep divergent: passing jobs keep no trace
    # Each input-dependent fault shows on the clip with its property, and on no other clip.
    for fault, clip in (("fp16-mel-overflow", "loud-sine"), ("short-pad-zeros", "short-yes")):
        rows = [status[(f"{n}.wav", f"default/float32/cpu+{fault}")] for n in CLIPS]
        assert [r["status"] for r in rows] == ["diverged" if n == clip else "pass" for n in CLIPS]
        hit = status[(f"{clip}.wav", f"default/float32/cpu+{fault}")]
        assert hit["first_divergence"] == "mel" and hit["finding"] == INPUT_FAULTS[fault].diagnosis
        assert os.path.isdir(hit["trace_b"])  # a diverging job keeps its traces
        fault_rows = frame[frame["config"] == f"default/float32/cpu+{fault}"]
        best = by_property(fault_rows)
        assert best[0]["accuracy"] == 1.0
        perfect = {d["property"] for d in best if d["accuracy"] == 1.0}
        assert INPUT_FAULTS[fault].depends_on in perfect


def test_single_clip_compare_on_the_shipped_clip_misses_input_faults(tmp_path):
    import whisperdiff as wd
    from whisperdiff.capture.session import Session

    assert not set(INPUT_FAULTS) & set(FAULTS)  # every FAULTS entry shows on the shipped clip; these do not
    ref = wd.trace("torch", out=tmp_path / "torch")
    tolerance = wd.load_tolerances("float32")
    session = Session("max", device="cpu", inject=list(INPUT_FAULTS))
    candidate = session.trace(out=tmp_path / "max+input-faults")
    c = wd.compare(ref, candidate, tolerance=tolerance)
    assert c.first_divergence is None and not c.op_failures and not [f for f in c.findings if f.severity == "error"]
    assert candidate.manifest["input"]["mel_sha256"] == ref.manifest["input"]["mel_sha256"]


def test_corpus_report_names_the_property_each_fault_depends_on(in_process, tmp_path):
    from whisperdiff.present.corpus_report import write_corpus_report

    spec, _, _ = in_process
    path = write_corpus_report(spec.out, tmp_path / "corpus.html", job_reports=1)
    html = path.read_text()
    assert "Content-Security-Policy" in html and "<script" not in html.lower()
    assert "fp16-mel-overflow" in html and "short-pad-zeros" in html
    assert html.count("found, and the property named") == 2
    assert "Clips ranked by their worst divergence" in html and "WER across the corpus" in html
    assert "broken.wav" in html  # the failed jobs, with their error
    assert html.count(">report</a>") == 1  # job_reports=1: the worst diverging job links to its own report


def test_a_sweep_whose_every_job_failed_still_gets_its_report(in_process, tmp_path):
    import shutil

    from whisperdiff.present.corpus_report import write_corpus_report

    spec, _, _ = in_process
    sweep = tmp_path / "failed"
    shutil.copytree(spec.out, sweep, ignore=shutil.ignore_patterns("reports", "traces", "*.html"))
    failed = [line for line in (sweep / "records.jsonl").read_text().splitlines() if '"status": "error"' in line]
    assert failed
    (sweep / "records.jsonl").write_text("\n".join(failed) + "\n")
    html = write_corpus_report(sweep).read_text()
    assert "broken.wav" in html and ">report</a>" not in html


def test_corpus_report_opens_no_path_a_record_names_outside_the_sweep(in_process, tmp_path):
    """records.jsonl is only a file: a record that names traces elsewhere, or a tolerance file, gets no
    report of its own, and nothing outside the sweep folder is read."""
    import shutil
    from pathlib import Path

    from whisperdiff.present.corpus_report import write_corpus_report

    spec, _, _ = in_process

    def sweep_with(name: str, change) -> Path:
        sweep = tmp_path / name
        shutil.copytree(spec.out, sweep, ignore=shutil.ignore_patterns("reports", "*.html"))
        records = [json.loads(line) for line in (sweep / "records.jsonl").read_text().splitlines()]
        for r in records:
            if r.get("trace_b"):
                change(r)
        (sweep / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return sweep

    def elsewhere(r: dict) -> None:  # a real trace pair, copied outside the sweep
        moved = tmp_path / "elsewhere" / Path(r["trace_b"]).parent.name
        shutil.copytree(Path(r["trace_b"]).parent, moved)
        r.update(trace_a=str(moved / "b"), trace_b=str(moved / "b"))

    def tolerance_file(r: dict) -> None:
        r["tolerances"] = str(tmp_path / "limits.toml")

    for sweep in (sweep_with("outside", elsewhere), sweep_with("tolerances", tolerance_file)):
        html = write_corpus_report(sweep, job_reports=3).read_text()
        assert ">report</a>" not in html and not (sweep / "reports").exists()


def test_sweep_cli_resumes_and_bad_input_is_one_line(in_process, corpus, tmp_path):
    spec, _, _ = in_process
    args = [sys.executable, "-m", "whisperdiff", "sweep", "--corpus", str(corpus), "-o", spec.out, "--no-report"]
    args += [f"--config={c}" for c in ("float32", "float32+fp16-mel-overflow", "float32+short-pad-zeros")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "12 jobs (0 run now, 12 done before)" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "whisperdiff", "sweep", "--corpus", str(tmp_path / "none"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: corpus") and len(bad.stderr.splitlines()) == 1
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for argv, fragment in (
        (["sweep", "--corpus", str(corpus), "-o", str(tmp_path / "o"), "--dtype", "float99"], "unknown dtype"),
        (["corpus", "make", str(a_file)], "is a file"),
    ):
        bad = subprocess.run([sys.executable, "-m", "whisperdiff", *argv], capture_output=True, text=True)
        assert bad.returncode == 2 and fragment in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "o").exists()  # refused before any job ran


def test_ray_sweep_survives_a_killed_worker_and_resumes(in_process, corpus, tmp_path):
    ray = pytest.importorskip("ray")
    from whisperdiff.experiments.sweep_ray import RayEngine

    spec_p, _, _ = in_process
    expected = {(r["clip_name"], r["config"]): r for r in SweepTable(spec_p.out).latest().values()}
    spec = SweepSpec(out=tmp_path / "ray", transcribe=False)
    configs = CONFIGS[:2]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        engine = RayEngine(spec, workers=2)
        pids = engine.pids()
        killed = []

        def kill_one(record):  # mid-sweep: the first record is in, the other worker is busy
            if not killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        result = run_sweep(spec, corpus, configs, engine=engine, on_record=kill_one)
    finally:
        ray.shutdown()
    assert killed and result.ran == 8
    lines = SweepTable(spec.out).records()
    assert len(lines) == 8 and len({r["job_id"] for r in lines}) == 8  # none lost, none twice
    for r in lines:  # the same verdicts as in process
        want = expected[(r["clip_name"], r["config"])]
        assert (r["status"], r.get("first_divergence")) == (want["status"], want.get("first_divergence")), r["job_id"]
    assert len({r["worker"] for r in lines if r["status"] != "error"}) >= 2
    again = run_sweep(spec, corpus, configs)  # a rerun resumes: nothing left to do
    assert again.ran == 0 and again.skipped == 8
