"""The CLI as a user runs it: real subprocesses, real files, real exit codes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SMALL_RANDOM, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A fresh working directory in which `whisperdiff trace` (no options) has run once."""
    cwd = tmp_path_factory.mktemp("cwd")
    proc = run_cli("trace", cwd=cwd, check=True)
    assert "wrote traces/torch-tiny.en-speech" in proc.stdout
    return cwd


@pytest.mark.slow
def test_main_job_traces_the_embedded_default(workdir):
    listing = json.loads(run_cli("ls", "--json", cwd=workdir, check=True).stdout)["traces"]
    assert len(listing) == 1
    entry = listing[0]
    assert (entry["status"], entry["impl"], entry["model"], entry["input"], entry["ops"]) == (
        "complete",
        "torch",
        "tiny.en",
        "speech.wav",
        55,
    )  # every op but the 4 optional attention probabilities


@pytest.mark.slow
def test_show_reports_normalised_output_and_large_residual_stream(workdir):
    shown = json.loads(run_cli("show", "traces/torch-tiny.en-speech", "--json", cwd=workdir, check=True).stdout)
    ops = {row["op"]: row for row in shown["ops"]}
    assert abs(ops["ln_post"]["mean"]) < 0.05 and abs(ops["ln_post"]["std"] - 1) < 0.2
    assert ops["blocks.3.out"]["std"] > 3 * ops["ln_post"]["std"]
    assert shown["manifest"]["model"]["id"] == "tiny.en"
    table = run_cli("show", "traces/torch-tiny.en-speech", cwd=workdir, check=True).stdout
    assert "ln_post" in table and "blocks.3.mlp.fc2" in table and "1x1500x384" in table


def test_console_script_is_installed():
    exe = shutil.which("whisperdiff", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert exe, "the whisperdiff console script is not installed"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "trace" in proc.stdout


def test_trace_options(tmp_path):
    np.save(tmp_path / "mel.npy", np.zeros((80, 3000), np.float32) - 0.5)
    proc = run_cli(
        "trace",
        "--model",
        SMALL_RANDOM,
        "--mel",
        str(tmp_path / "mel.npy"),
        "--out",
        str(tmp_path / "t"),
        "--taps",
        "blocks.1.*",
        "--json",
        cwd=tmp_path,
        check=True,
    )
    summary = json.loads(proc.stdout)
    assert summary["trace"] == str(tmp_path / "t") and summary["ops"] == 1 + 13
    shown = json.loads(run_cli("show", str(tmp_path / "t"), "--json", check=True).stdout)
    assert shown["manifest"]["input"]["kind"] == "mel"
    assert shown["ops"][0]["op"] == "mel" and shown["ops"][0]["mean"] == -0.5


BAD_INPUTS = [
    (["trace", "--audio", "missing.wav"], "does not exist"),
    (["trace", "--audio", "corrupt.wav"], "corrupt wav"),
    (["trace", "--model", "tiny-ultra"], "available offline"),
    (["trace", "--model", SMALL_RANDOM, "--mel", "short.npy"], "exactly 3000"),
    (["trace", "--model", SMALL_RANDOM, "--dtype", "float8"], "unknown dtype"),
    (["trace", "--model", SMALL_RANDOM, "--device", "tpu"], "unknown device"),
    (["trace", "--no-such-flag"], "no such option"),
    (["show", "truncated"], "truncated"),
    (["show", "deleted"], "missing"),
    (["show", "newer"], "newer whisperdiff"),
    (["show", "empty"], "not a trace"),
    (["ls", "empty"], "no traces"),
    (["show", "nowhere"], "does not exist"),
]


@pytest.fixture(scope="module")
def bad_inputs(workdir, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEdata\x00\x00\x00\x00")
    np.save(d / "short.npy", np.zeros((80, 1500), np.float32))
    (d / "empty").mkdir()
    for name in ("truncated", "deleted", "newer"):
        shutil.copytree(workdir / "traces" / "torch-tiny.en-speech", d / name)
    f = d / "truncated" / "tensors" / "blocks.2.mlp.fc1.npy"
    f.write_bytes(f.read_bytes()[:1000])
    (d / "deleted" / "tensors" / "conv2.npy").unlink()
    manifest = json.loads((d / "newer" / "manifest.json").read_text())
    (d / "newer" / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 3}))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("args,fragment", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_error(bad_inputs, args, fragment):
    before = sorted(p.name for p in bad_inputs.iterdir())
    proc = run_cli(*args, cwd=bad_inputs)
    assert_one_line_error(proc, fragment)
    assert sorted(p.name for p in bad_inputs.iterdir()) == before  # nothing written, nothing lost


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_trace_never_looks_complete(tmp_path, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisperdiff.present.cli", "trace", "--taps", "all"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    traces = tmp_path / "traces"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until tensors are being written, then kill mid-run
        partial = [p for p in traces.glob(".*partial*")] if traces.exists() else []
        if partial and len(list((partial[0] / "tensors").glob("*.npy"))) >= 3:
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("trace never started writing")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    assert not (traces / "torch-tiny.en-speech").exists()
    listing = run_cli("ls", "--json", cwd=tmp_path)
    if sig == signal.SIGKILL:  # no chance to clean up: listed, but as incomplete
        assert [e["status"] for e in json.loads(listing.stdout)["traces"]] == ["incomplete"]
    else:  # SIGTERM / Ctrl-C unwind and remove the partial directory
        assert_one_line_error(listing, "no traces")
        assert "interrupted" in stderr
