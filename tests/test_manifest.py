"""The typed manifest (store/manifest.py), comparability with its reasons (analysis/comparability.py) and
`ls` saying whether it verified the tensor bytes, on real torch traces of a small random model."""

import json
import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

import whisperdiff as wd
from whisperdiff.analysis.comparability import Comparability, comparability
from whisperdiff.store.manifest import InputRecord, Manifest, ModelRecord, OpRecord
from whisperdiff.store.trace import MANIFEST, list_traces, load_trace


@pytest.fixture(scope="module")
def pair(tmp_path_factory, small_random):
    d = tmp_path_factory.mktemp("manifest")
    return (
        wd.trace("torch", model=small_random, out=d / "a", taps="conv1,ln_post").path,
        wd.trace("torch", model=small_random, out=d / "b", taps="conv1,ln_post").path,
    )


def edit_manifest(trace, fn):
    m = json.loads((trace / MANIFEST).read_text())
    fn(m)
    (trace / MANIFEST).write_text(json.dumps(m))


def test_a_trace_manifest_is_typed_and_reads_as_its_json(pair):
    m = load_trace(pair[0]).manifest
    on_disk = json.loads((pair[0] / MANIFEST).read_text())
    assert isinstance(m, Manifest) and isinstance(m.model, ModelRecord) and isinstance(m.input, InputRecord)
    assert all(isinstance(op, OpRecord) for op in m.ops) and [op.name for op in m.ops] == ["mel", "conv1", "ln_post"]
    assert m.model.weights_sha256 == on_disk["model"]["weights_sha256"] and m.input.sha256 == on_disk["input"]["sha256"]
    assert m.ops[1].shape == tuple(on_disk["ops"][1]["shape"]) and m.impl == "torch" and m.injected == ()
    assert m.to_json() == on_disk and dict(m) == on_disk  # the JSON round trip is lossless
    assert m["model"]["id"] == m.model.id and m.get("taps") == m.taps == "conv1,ln_post"


@pytest.mark.parametrize("drop", ["input", "model", "input.sha256", "model.weights_sha256"])
def test_a_manifest_without_provenance_is_damaged(pair, tmp_path, drop):
    b = shutil.copytree(pair[1], tmp_path / "b")
    section, _, key = drop.partition(".")
    edit_manifest(b, lambda m: m[section].pop(key) if key else m.pop(section))
    with pytest.raises(wd.WhisperdiffError, match=f"{MANIFEST} is damaged: .*{key or section}") as e:
        load_trace(b)
    assert "\n" not in str(e.value) and "re-run `whisperdiff trace`" in str(e.value)
    assert list_traces(tmp_path)[0].status.startswith("damaged")
    for command in ("compare", "check"):
        proc = run_cli(command, str(pair[0]), str(b), "--no-replay")
        assert proc.returncode == 2, (command, proc.returncode, proc.stderr)
        assert_one_line_error(proc, "is damaged", section)


def test_the_writer_refuses_a_manifest_without_provenance(tmp_path):
    with pytest.raises(wd.WhisperdiffError, match="cannot write .*no 'input' entry"):
        with wd.TraceWriter(tmp_path / "t", {"impl": "x", "model": {"weights_sha256": "0" * 64}}) as w:
            w.record("mel", np.zeros((1, 2), np.float32))
    assert not (tmp_path / "t").exists()


def test_comparability_is_typed_with_its_reasons(pair, tmp_path):
    ma = load_trace(pair[0]).manifest
    same = comparability(ma, load_trace(pair[1]).manifest)
    assert same == Comparability() and same and same.comparable and same.reasons == () and same.summary == ""
    b = shutil.copytree(pair[1], tmp_path / "b")
    edit_manifest(b, lambda m: (m["model"].update(weights_sha256="f" * 64), m["input"].update(sha256="e" * 64)))
    other = comparability(ma, load_trace(b).manifest)
    assert not other and [r.kind for r in other.reasons] == ["weights", "input"]
    assert other.summary.startswith(f"different weights (sha256 {ma.model.weights_sha256[:12]} vs ffffffffffff)")
    assert other.warnings[0].startswith("NOT COMPARABLE: different weights")
    c = wd.compare(pair[0], b, replay=False)
    assert c.comparability == other and not c.comparable and c.comparability.reason("input").kind == "input"
    assert [w for w in c.warnings if w.startswith("NOT COMPARABLE")] == other.warnings  # the same text as before


def test_ls_says_it_did_not_verify_and_verify_finds_a_flipped_byte(pair, tmp_path):
    for name in ("good", "flipped"):
        shutil.copytree(pair[0], tmp_path / name)
    file = tmp_path / "flipped" / "tensors" / "conv1.npy"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0x01  # one byte of the tensor body: header and size still right
    file.write_bytes(bytes(data))
    fast = {item.path.name: item for item in list_traces(tmp_path)}
    assert [fast[n].status for n in ("good", "flipped")] == ["complete", "complete"]  # the hashes are not read
    assert not fast["flipped"].verified and fast["flipped"].shown_status == "complete (not verified)"
    checked = {item.path.name: item for item in list_traces(tmp_path, verify=True)}
    assert checked["good"].status == "complete" and checked["good"].verified
    assert checked["flipped"].status.startswith("damaged: op 'conv1'") and not checked["flipped"].verified
    assert "does not match its xxh3_128 digest" in checked["flipped"].status

    wide = {"COLUMNS": "300"}  # one table row per line
    assert "complete (not verified)" in run_cli("ls", str(tmp_path), env=wide, check=True).stdout
    rows = {
        r["trace"].rsplit("/", 1)[-1]: r for r in json.loads(run_cli("ls", str(tmp_path), "--json").stdout)["traces"]
    }
    assert rows["flipped"]["status"] == "complete" and rows["flipped"]["verified"] is False
    rows = {
        r["trace"].rsplit("/", 1)[-1]: r
        for r in json.loads(run_cli("ls", str(tmp_path), "--json", "--verify", check=True).stdout)["traces"]
    }
    assert rows["good"]["status"] == "complete" and rows["good"]["verified"] is True
    assert rows["flipped"]["status"].startswith("damaged: op 'conv1'")
    table = run_cli("ls", str(tmp_path), "--verify", env=wide, check=True).stdout
    assert "damaged: op 'conv1'" in table and "not verified" not in table
