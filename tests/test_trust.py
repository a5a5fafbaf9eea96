"""Issue 13: reading a trace never runs code, never opens files outside it, never passes damaged data;
every failure a user or a file causes is one line and exit 2; commits survive signals.

Real traces of a small random model (torch runner), real files, FIFOs, symlinks, real subprocesses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

import whisperdiff as wd
from whisperdiff.experiments.patch import patch
from whisperdiff.gate.check import check
from whisperdiff.measure.tolerances import Tolerance
from whisperdiff.store import trace as store
from whisperdiff.store.digest import digest_fields
from whisperdiff.store.trace import MANIFEST, TraceWriter, list_traces, load_trace

SMALL = "random:tiny,n_audio_layer=1,n_audio_state=64,n_audio_head=2,n_text_layer=1,n_text_state=64,n_text_head=2"
TAPS = "conv1,blocks.0.out,ln_post"
# what every trace records: the weights' and the input's digests (a manifest without them is damaged)
PROVENANCE = {"model": {"id": "test", "weights_sha256": "0" * 64}, "input": {"path": "test.wav", "sha256": "1" * 64}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two torch traces of the same small model and input: A (reference) and B (candidate), identical."""
    d = tmp_path_factory.mktemp("pair")
    model = wd.load_model(SMALL)
    return (
        wd.trace("torch", model=model, out=d / "a", taps=TAPS).path,
        wd.trace("torch", model=model, out=d / "b", taps=TAPS).path,
    )


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_manifest(trace: Path, fn) -> None:
    m = json.loads((trace / MANIFEST).read_text())
    fn(m)
    (trace / MANIFEST).write_text(json.dumps(m))


def rewrite(trace: Path, op: str, fn) -> None:
    """Change op's values and re-write its digest: the trace is consistent, only the numbers are wrong."""
    m = json.loads((trace / MANIFEST).read_text())
    entry = next(o for o in m["ops"] if o["name"] == op)
    value = fn(np.load(trace / entry["file"]).copy())
    np.save(trace / entry["file"], value)
    entry.update(digest_fields(value, entry))
    entry["file_bytes"] = (trace / entry["file"]).stat().st_size
    (trace / MANIFEST).write_text(json.dumps(m))


# -- 1. reading is inert --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(pair, tmp_path_factory):
    """B names a plugin that writes a sentinel when imported; both manifests name their model by a
    FIFO outside the trace (opening it would hang) and B's input is that FIFO too."""
    d = tmp_path_factory.mktemp("hostile")
    sentinel = d / "SENTINEL"
    plugin = d / "plugin.py"
    plugin.write_text(
        f"open({str(sentinel)!r}, 'w').write('imported')\n"
        "def factory(model, device, dtype):\n    raise SystemExit('ran')\n"
    )
    fifo = d / "model.pt"
    os.mkfifo(fifo)
    a, b = copy(pair[0], d / "a"), copy(pair[1], d / "b")
    for t in (a, b):
        edit_manifest(t, lambda m: m["model"].update(id=str(fifo), source=f"openai-whisper:{fifo}"))
    edit_manifest(b, lambda m: (m.update(impl=f"{plugin}:factory"), m["input"].update(path=str(fifo))))
    return a, b, sentinel, plugin


def test_patch_never_runs_the_impl_b_names(hostile):
    a, b, sentinel, plugin = hostile
    with pytest.raises(wd.WhisperdiffError, match="never runs code a trace names.*--impl"):
        patch(a, b, transcribe=False)
    for impl in ("os:getcwd", "this:x"):  # a module path: importing it would run it
        edit_manifest(b, lambda m: m.update(impl=impl))  # noqa: B023
        with pytest.raises(wd.WhisperdiffError, match="never runs code"):
            patch(a, b, transcribe=False)
    edit_manifest(b, lambda m: m.update(impl=f"{plugin}:factory"))
    assert not sentinel.exists()
    # named by the user: torch re-runs B, on B's own recorded mel, with the model given by --model
    p = patch(a, b, transcribe=False, impl="torch", model=SMALL, ops="ln_post")
    assert p.impl == "torch" and p.unpatched_rel_l2 < 1e-6
    assert p.notes and "B's manifest names impl" in p.notes[0] and "plugin.py" in p.notes[0]
    assert not sentinel.exists()


def test_no_command_imports_a_plugin_or_opens_a_model_path_from_a_trace(hostile, tmp_path):
    a, b, sentinel, _ = hostile
    assert_one_line_error(run_cli("patch", str(a), str(b), "--no-transcribe"), "never runs code")
    proc = run_cli("report", str(a), str(b), "--patch", "-o", str(tmp_path / "r.html"))
    assert_one_line_error(proc, "never runs code")
    assert not (tmp_path / "r.html").exists() and not list(tmp_path.iterdir())
    proc = run_cli("compare", str(a), str(b))  # would hang on the FIFO if it opened the model path
    assert proc.returncode == 0 and "no divergence" in proc.stdout, proc.stderr
    assert "not a known model" in proc.stdout and "pass --model" in proc.stdout
    proc = run_cli("check", str(a), str(b))
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr
    assert not sentinel.exists()


def test_model_references_resolve_only_among_known_models(tmp_path):
    from whisperdiff.inputs.models import known_spec, model_of

    ckpt = tmp_path / "evil.pt"
    ckpt.write_bytes(b"not read")
    assert known_spec(str(ckpt), f"openai-whisper:{ckpt}")[0] is None
    assert known_spec("tiny.en", "")[0] == "tiny.en" and known_spec(SMALL, "random")[0] == SMALL
    loaded, reasons = model_of([{"model": {"id": str(ckpt), "source": f"openai-whisper:{ckpt}"}}])
    assert loaded is None and "not a known model" in reasons[0]
    # the user's own --model may be any path (their choice, not the trace's)
    loaded, reasons = model_of([{"model": {"id": str(ckpt)}}], prefer=str(ckpt))
    assert loaded is None and "evil.pt" in reasons[-1] and "cannot read checkpoint" in reasons[-1]


def test_only_regular_files_inside_the_trace_are_opened(pair, tmp_path):
    b = copy(pair[1], tmp_path / "b")
    outside = tmp_path / "outside.npy"
    f = b / "tensors" / "conv1.npy"
    shutil.copy(f, outside)  # a perfect copy: following the link would even pass the digest
    f.unlink()
    f.symlink_to(outside)
    with pytest.raises(wd.WhisperdiffError, match=r"op 'conv1'.*symlink"):
        load_trace(b)["conv1"]
    f.unlink()
    os.mkfifo(f)
    with pytest.raises(wd.WhisperdiffError, match=r"op 'conv1'.*not a regular file"):
        load_trace(b)["conv1"]  # a FIFO: refused at once, no hang
    assert list_traces(tmp_path)[0].status.startswith("damaged: op 'conv1'")
    (b / "tensors" / "conv1.npy").unlink()
    shutil.copy(outside, b / "tensors" / "conv1.npy")
    os.replace(b / "tensors", tmp_path / "tensors")
    (b / "tensors").symlink_to(tmp_path / "tensors")
    with pytest.raises(wd.WhisperdiffError, match="symlink"):
        load_trace(b)["mel"]
    c = copy(pair[1], tmp_path / "c")
    edit_manifest(c, lambda m: m["ops"][1].update(file="../../outside.npy"))
    with pytest.raises(wd.WhisperdiffError, match="points outside the trace"):
        load_trace(c)


# -- 2. every read is verified --------------------------------------------------------------------------


def test_a_flipped_bit_is_an_error_naming_op_and_file(pair, tmp_path):
    b = copy(pair[1], tmp_path / "b")
    f = b / "tensors" / "blocks.0.out.npy"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    for run in (lambda: check(pair[0], b), lambda: wd.compare(pair[0], b, replay=False)):
        with pytest.raises(
            wd.WhisperdiffError,
            match=r"op 'blocks.0.out' \(tensors/blocks.0.out.npy\) does not match its xxh3_128 digest",
        ):
            run()
    proc = run_cli("check", str(pair[0]), str(b), "--no-replay")
    assert proc.returncode == 2
    assert_one_line_error(proc, "blocks.0.out", "xxh3_128 digest")
    assert check(pair[0], pair[1], replay=False).passed  # the unmodified pair still passes


def _nested(levels: int, leaf=1):
    """`levels` dicts one inside the next around `leaf` ({"k": {"k": ... leaf}})."""
    for _ in range(levels):
        leaf = {"k": leaf}
    return leaf


def test_manifest_damage_is_an_error(pair, tmp_path):
    cases = {
        "wrong digest": (lambda m: m["ops"][2].update(xxh3_128="0" * 32), "does not match its xxh3_128 digest"),
        "two digests": (lambda m: m["ops"][2].update(sha256="0" * 64), "no valid digest"),
        "no digest": (lambda m: m["ops"][2].pop("xxh3_128"), "no valid digest"),
        "duplicate op": (lambda m: m["ops"].append(dict(m["ops"][1])), "listed twice"),
        "no ops": (lambda m: m.update(ops=[]), "op list is empty"),
        "shape type": (lambda m: m["ops"][1].update(shape="1x2"), "has shape"),
        "file NUL": (lambda m: m["ops"][1].update(file="tensors/co\x00nv1.npy"), "NUL"),
        "file too long": (lambda m: m["ops"][1].update(file="tensors/" + "a" * 5000 + ".npy"), "points outside"),
        "runner type": (lambda m: m.update(runner=[1]), "'runner'"),
        "run type": (lambda m: m.update(run="x"), "'run'"),
        "input.path type": (lambda m: m["input"].update(path=7), "input.path"),
        "lone surrogate": (lambda m: m.update(impl="a\udc80"), "surrogate"),
        "nested too deeply": (lambda m: m.update(runner=_nested(32)), "nested too deeply"),  # a leaf at depth 33
        "schema version": (lambda m: m.update(schema_version="1"), "schema_version"),
        "negative dim": (lambda m: m["ops"][1].update(shape=[-1, 64]), "has shape"),
        "huge dim": (lambda m: m["ops"][1].update(shape=[2**62, 64]), "has shape"),
        "model dims": (lambda m: m["model"]["dims"].update(n_audio_state=0), "n_audio_state"),
    }
    for name, (fn, fragment) in cases.items():
        b = copy(pair[1], tmp_path / name.replace(" ", "_"))
        edit_manifest(b, fn)
        with pytest.raises(wd.WhisperdiffError, match=fragment):
            check(pair[0], b, replay=False)
        status = {item.path.name: item.status for item in list_traces(tmp_path)}[b.name]
        assert status != "complete" or name == "wrong digest", (name, status)  # a digest needs a read


def test_npy_headers_must_match_the_manifest(pair, tmp_path):
    """Byte order, dtype, shape and C order come from the header: each must be what the manifest says."""

    def header(descr, fortran, shape):
        text = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {tuple(shape)}, }}"
        text += " " * (63 - (10 + len(text)) % 64) + "\n"
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()

    for descr, fortran, swap, fragment in (
        (">f4", False, True, "byte order"),
        ("<f4", True, False, "Fortran"),
        ("<i4", False, False, "int32"),
        ("|O", False, False, "pickled"),
    ):
        b = copy(pair[1], tmp_path / f"b{descr[1:]}{fortran}")
        f = b / "tensors" / "ln_post.npy"
        array = np.load(f)
        body = (array.byteswap() if swap else array).tobytes()  # >f4: the same values, big-endian
        f.write_bytes(header(descr, fortran, array.shape) + body)
        with pytest.raises(wd.WhisperdiffError, match=f"op 'ln_post'.*{fragment}"):
            check(pair[0], b, replay=False)
        with pytest.raises(wd.WhisperdiffError, match=fragment):
            load_trace(b).summary()  # `show` too
        assert list_traces(b)[0].status.startswith("damaged")


def test_a_nan_in_the_reference_is_a_finding_not_rel_l2_zero(pair, tmp_path):
    a, b = copy(pair[0], tmp_path / "a"), copy(pair[1], tmp_path / "b")
    for t in (a, b):  # the same NaN on both sides: the finite elements agree exactly
        rewrite(t, "conv1", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x))
    c = wd.compare(a, b, replay=False)
    assert c.first_divergence == "conv1"
    assert any(f.kind == "nonfinite_reference" and f.op == "conv1" for f in c.findings)
    r = check(a, b, replay=False)
    assert not r.passed and r.failed_ops == ["conv1"] and r.failures[0].metric == "nonfinite_reference"


def test_tiny_en_with_one_flipped_bit_fails_check_and_unmodified_passes(default_trace, tmp_path):
    b = copy(default_trace.path, tmp_path / "b")
    f = b / "tensors" / "blocks.2.mlp.fc1.npy"
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x10
    f.write_bytes(bytes(data))
    proc = run_cli("check", str(default_trace.path), str(b), "--no-replay")
    assert_one_line_error(proc, "blocks.2.mlp.fc1", "xxh3_128 digest")
    assert proc.returncode == 2
    assert run_cli("check", str(default_trace.path), str(default_trace.path), "--no-replay").returncode == 0


# -- 3. one error path; terminal-safe output -----------------------------------------------------------


def test_trace_text_reaches_the_terminal_escaped(pair, tmp_path):
    b = copy(pair[1], tmp_path / "b")
    edit_manifest(
        b,
        lambda m: (
            m.update(impl="\x1b[2J\x1b[32mPASS\x1b[0m [/] [bold]x"),
            m["model"].pop("source"),
            m["model"].update(id=":thumbs_up: \x9b31m"),
            m["input"].update(path="in\u202eput"),
        ),
    )
    for args in (("show", str(b)), ("ls", str(tmp_path)), ("compare", str(pair[0]), str(b), "--no-replay")):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout + proc.stderr
        assert not any(ch in text for ch in "\x1b\x9b\u202e"), (args, text[:300])
        assert "\\x1b" in text, args  # shown, not obeyed
    assert ":thumbs_up:" in run_cli("show", str(b)).stdout
    proc = run_cli("show", str(tmp_path / "my:thumbs_up:trace"))
    assert_one_line_error(proc, "my:thumbs_up:trace")


# -- 4. arguments are validated ------------------------------------------------------------------------


def test_bad_arguments_are_errors(pair, tmp_path):
    for spec, fragment in (
        ("random:tiny,n_audio_state=0", "n_audio_state"),
        ("random:tiny,n_audio_layer=-1", "n_audio_layer"),
        ("", "empty"),
        ("random:large,n_audio_layer=128,n_audio_state=8192,n_audio_head=8", "weights"),
    ):
        with pytest.raises(wd.WhisperdiffError, match=fragment):
            wd.load_model(spec)
    for kwargs in ({"atol": float("nan")}, {"max_rel_l2": -1.0}, {"min_cosine": 2.0}, {"rtol": float("inf")}):
        with pytest.raises(wd.WhisperdiffError, match="must be"):
            Tolerance(**kwargs)
    with pytest.raises(wd.WhisperdiffError, match="unknown model 'nope'"):
        wd.compare(pair[0], pair[1], model="nope", replay=False)
    with pytest.raises(wd.WhisperdiffError, match="--taps"):
        wd.trace("torch", model=SMALL, taps="", out=tmp_path / "t")
    wav = tmp_path / "liar.wav"  # the header claims 4 GB of audio; the file holds 100 bytes
    wav.write_bytes(
        b"RIFF"
        + (0xFFFFFFF0).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + bytes.fromhex("01000100803e0000007d00000200100064617461")
        + (0xFFFFFFC0).to_bytes(4, "little")
        + bytes(100)
    )
    from whisperdiff.inputs.audio import load_audio

    with pytest.raises(wd.WhisperdiffError, match="header says"):
        load_audio(wav)
    (tmp_path / "file").write_text("precious")
    with pytest.raises(wd.WhisperdiffError, match="is a file"):
        TraceWriter(tmp_path / "file", {"impl": "x"})
    assert (tmp_path / "file").read_text() == "precious"


def test_bad_command_lines_are_one_line_errors(pair, tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "w.npz", a=np.ones(1000))
    data = (tmp_path / "w.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    golden = tmp_path / "golden"
    assert run_cli("golden", "save", str(pair[0]), "-o", str(golden), "--samples", "64").returncode == 0
    samples = golden / "samples.npz"
    samples.write_bytes(samples.read_bytes()[:-40])
    a, b = map(str, pair)
    surrogate = copy(pair[1], tmp_path / "surrogate")
    edit_manifest(surrogate, lambda m: m.update(impl="a\udc80b"))
    (tmp_path / "reports").mkdir()
    for args, fragment in (
        (["weights", "default", str(tmp_path / "empty.npz")], "empty.npz"),
        (["weights", "default", str(tmp_path / "cut.npz")], "cut.npz"),
        (["check", b, "--golden", str(golden)], "samples.npz"),
        (["report", a, str(surrogate), "-o", str(tmp_path / "reports" / "r.html")], "surrogate"),
        (["compare", a, b, "--rename", str(tmp_path)], str(tmp_path)),
        (["compare", a, b, "--atol", "nan"], "atol"),
        (["compare", a, b, "--model", "nope"], "nope"),
        (["tolerances", a, "--factor", "nan"], "factor"),
        (["trace", "--model", "random:tiny,n_audio_state=0", "-o", str(tmp_path / "x")], "n_audio_state"),
        (["trace", "--model", "", "-o", str(tmp_path / "x")], "empty"),
        (["trace", "--model", SMALL, "--taps", "", "-o", str(tmp_path / "x")], "taps"),
        (["trace", "--model", SMALL, "-o", str(tmp_path / "empty.npz")], "is a file"),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert_one_line_error(proc, fragment)
    assert not (tmp_path / "x").exists() and (tmp_path / "empty.npz").exists()
    assert not list((tmp_path / "reports").iterdir())  # no half-written report, no .partial


def test_one_bad_entry_never_breaks_the_listing(pair, tmp_path):
    copy(pair[0], tmp_path / "good")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / MANIFEST).write_text("{")
    (tmp_path / "self").symlink_to("self")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / MANIFEST)
    statuses = {item.path.name: item.status for item in list_traces(tmp_path)}
    assert statuses["good"] == "complete"
    assert statuses["badjson"].startswith("damaged") and statuses["fifo"].startswith("damaged")
    proc = run_cli("ls", str(tmp_path), "--json")
    assert proc.returncode == 0 and {e["trace"].rsplit("/", 1)[-1] for e in json.loads(proc.stdout)["traces"]} >= {
        "good",
        "badjson",
    }


# -- 5. commit safely ----------------------------------------------------------------------------------


def test_a_signal_at_the_commit_rename_never_loses_the_previous_trace(tmp_path, monkeypatch):
    def write(ops):
        with TraceWriter(tmp_path / "t", {"impl": "test", **PROVENANCE}) as w:
            for i, name in enumerate(ops):
                w.record(name, np.full(3, i, np.float32))

    write(["mel"])
    real_replace = os.replace
    calls = []

    def replace_with_a_signal(src, dst):  # SIGTERM arrives at the first rename of the commit
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_replace(src, dst)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, terminate)
    monkeypatch.setattr(store.os, "replace", replace_with_a_signal)
    try:
        with pytest.raises(KeyboardInterrupt):
            write(["mel", "conv1"])
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        monkeypatch.undo()
    # the two renames ran together: the new trace is in place (and the process knows it wrote it)
    assert load_trace(tmp_path / "t").ops == ["mel", "conv1"] and store.COMMITTED[-1] == tmp_path / "t"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]

    # a rename that fails puts the previous trace back under its name
    def failing(src, dst):
        if Path(src).name.startswith(".t.partial-"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", failing)
    with pytest.raises(OSError):
        write(["mel", "conv1", "conv2"])
    monkeypatch.undo()
    assert load_trace(tmp_path / "t").ops == ["mel", "conv1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_leftovers_of_a_killed_commit_are_never_complete_and_are_cleaned_up(pair, tmp_path):
    dead = 2**22 + 12345  # no such process (pid_max is at most 2**22)
    copy(pair[0], tmp_path / f".t.old-{dead}")  # SIGKILL between the renames: the previous trace parked
    copy(pair[1], tmp_path / f".t.partial-{dead}")
    statuses = {item.path.name: item.status for item in list_traces(tmp_path)}
    assert statuses[f".t.old-{dead}"].startswith("incomplete: the previous t")
    assert statuses[f".t.partial-{dead}"] == "incomplete"
    assert store.clean_leftovers(tmp_path / "t") == [
        f"restored the previous t from .t.old-{dead}",
        f"removed .t.partial-{dead}",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"] and load_trace(tmp_path / "t").ops
    copy(pair[1], tmp_path / f".t.old-{dead}")  # the next run removes an .old whose trace is in place
    with TraceWriter(tmp_path / "t", {"impl": "test", **PROVENANCE}) as w:
        w.record("mel", np.zeros(2, np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_a_signal_during_start_up_is_exit_130_and_one_line(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisperdiff.present.cli", "trace", "--taps", "all", "-o", str(tmp_path / "t")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # importing typer, rich, numpy, torch, loading tiny.en: before the trace is written
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1 and lines[0].startswith("interrupted"), (proc.returncode, stderr)
    assert not (tmp_path / "t").exists() and not list(tmp_path.iterdir())
