import json
import time
from pathlib import Path

import numpy as np
import pytest

import whisperdiff as wd
from whisperdiff.store.digest import array_digest
from whisperdiff.store.trace import MANIFEST, TraceWriter, list_traces, load_trace, release

# what every trace records: the weights' and the input's digests (a manifest without them is damaged)
PROVENANCE = {"model": {"id": "test", "weights_sha256": "0" * 64}, "input": {"path": "test.wav", "sha256": "1" * 64}}


def write(path, ops=("mel", "ln_post"), **manifest):
    with TraceWriter(path, {"impl": "test", **PROVENANCE, **manifest}) as w:
        for i, name in enumerate(ops):
            w.record(name, np.full((2, 3), i, np.float32))
    return load_trace(path)


def test_round_trip_is_lazy_and_exact(tmp_path):
    t = write(tmp_path / "t")
    assert t.ops == ["mel", "ln_post"]
    assert isinstance(t["ln_post"], np.memmap) and not t["ln_post"].flags.writeable
    assert np.array_equal(t["ln_post"], np.ones((2, 3), np.float32))
    assert sorted(p.name for p in (tmp_path / "t" / "tensors").iterdir()) == ["ln_post.npy", "mel.npy"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial left behind


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_run_leaves_nothing_and_keeps_the_old_trace(tmp_path, error):
    old = write(tmp_path / "t", ops=("mel",))
    with pytest.raises(error):
        with TraceWriter(tmp_path / "t", {"impl": "test"}) as w:
            w.record("mel", np.zeros(4, np.float32))
            w.record("conv1", np.zeros(4, np.float32))
            raise error()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert load_trace(tmp_path / "t").ops == old.ops == ["mel"]


def test_replacing_a_trace_and_refusing_foreign_directories(tmp_path):
    write(tmp_path / "t", ops=("mel",))
    assert write(tmp_path / "t", ops=("mel", "conv1")).ops == ["mel", "conv1"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(wd.WhisperdiffError, match="not a whisperdiff trace"):
        write(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_damaged_traces_are_one_line_errors(tmp_path):
    t = write(tmp_path / "t")
    file = tmp_path / "t" / "tensors" / "ln_post.npy"
    file.write_bytes(file.read_bytes()[:-8])
    with pytest.raises(wd.WhisperdiffError, match="truncated or corrupt"):
        t["ln_post"]
    assert list_traces(tmp_path)[0].status == "damaged: tensors/ln_post.npy truncated or altered"
    file.unlink()
    with pytest.raises(wd.WhisperdiffError, match="ln_post.npy is missing"):
        load_trace(tmp_path / "t")["ln_post"]
    assert list_traces(tmp_path)[0].status == "damaged: tensors/ln_post.npy missing"


def test_edited_tensor_fails_verification(tmp_path):
    t = write(tmp_path / "t")
    file = tmp_path / "t" / "tensors" / "mel.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(wd.WhisperdiffError, match="does not match its xxh3_128 digest"):
        t.verify("mel")


@pytest.mark.parametrize("how", ["edited copy", "symlink"])
def test_a_file_replaced_after_it_was_hashed_ahead_is_read_again_and_refused(tmp_path, how):
    """A reader in order has the next op hashed on another thread; it takes that mapping over only if the
    file is still the one hashed. One put in its place since (another file, or a link) is read anew."""
    t = write(tmp_path / "t", ops=("mel", "conv1", "ln_post"))
    t["mel"]
    t["conv1"]  # in order: ln_post is being hashed ahead now
    assert "ln_post" in t._ahead
    t._ahead["ln_post"].result()  # hashed, from the original file
    file = tmp_path / "t" / "tensors" / "ln_post.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "other.npy").write_bytes(bytes(data))
    file.unlink()
    if how == "symlink":
        file.symlink_to(tmp_path / "other.npy")
        match = "symlink"
    else:
        (tmp_path / "other.npy").rename(file)
        match = "does not match its xxh3_128 digest"
    with pytest.raises(wd.WhisperdiffError, match=match):
        t["ln_post"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_released_arrays_are_unmapped_on_the_digest_thread(tmp_path):
    t = write(tmp_path / "t", ops=("mel", "ln_post"))
    arrays = [t["mel"], t["ln_post"]]
    files = [str((tmp_path / "t" / "tensors" / f"{n}.npy").resolve()) for n in ("mel", "ln_post")]
    assert all(f in Path("/proc/self/maps").read_text() for f in files)
    release(arrays)
    deadline = time.monotonic() + 10
    while arrays and time.monotonic() < deadline:
        time.sleep(0.01)
    assert arrays == []  # emptied by the digest thread, which held the last references
    assert not any(f in Path("/proc/self/maps").read_text() for f in files)


def test_chunks_are_the_op_in_pieces_and_a_damaged_op_raises_before_its_last(tmp_path):
    """Trace.chunks copies an op into one reused buffer a piece at a time, hashing as it reads: the pieces
    are the op's bytes; a flipped bit anywhere raises the damage error before the last piece is given, so
    nothing made of the earlier pieces is used; a buffer too small is refused; an empty op yields nothing."""
    with TraceWriter(tmp_path / "t", {"impl": "test", **PROVENANCE}) as w:
        w.record("mel", np.arange(7 * 5, dtype=np.float32).reshape(7, 5))
        w.record("ln_post", np.zeros((0, 4), np.float32))
    t = load_trace(tmp_path / "t")
    buffer = np.empty(40, np.uint8)
    pieces = [bytes(p) for p in t.chunks("mel", 40, buffer)]
    assert [len(p) for p in pieces] == [40, 40, 40, 20]
    assert b"".join(pieces) == np.asarray(t["mel"]).tobytes()
    assert list(t.chunks("ln_post", 40, buffer)) == []
    with pytest.raises(ValueError, match="at least 64 bytes"):
        next(t.chunks("mel", 64, buffer))
    file = tmp_path / "t" / "tensors" / "mel.npy"
    data = bytearray(file.read_bytes())
    data[-100] ^= 0x01  # in the second piece
    file.write_bytes(bytes(data))
    fresh, given = load_trace(tmp_path / "t"), []
    with pytest.raises(wd.WhisperdiffError, match="op 'mel'.*does not match its xxh3_128 digest"):
        for piece in fresh.chunks("mel", 40, buffer):
            given.append(len(piece))
    assert given == [40, 40, 40]  # the last piece never came


def test_a_schema_1_trace_with_sha256_digests_still_reads_and_verifies(tmp_path):
    """Traces written before schema 2 carry SHA-256 per op: they read, and damage in them is still caught."""
    import hashlib

    write(tmp_path / "t")
    manifest = json.loads((tmp_path / "t" / MANIFEST).read_text())
    for op in manifest["ops"]:
        data = np.load(tmp_path / "t" / op["file"])
        assert op.pop("xxh3_128") == array_digest(data)  # what schema 2 writes
        op["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    (tmp_path / "t" / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 1}))
    old = load_trace(tmp_path / "t")
    assert np.array_equal(old["ln_post"], np.ones((2, 3), np.float32))
    assert list_traces(tmp_path, verify=True)[0].status == "complete"
    file = tmp_path / "t" / "tensors" / "ln_post.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(wd.WhisperdiffError, match="ln_post.*does not match its sha256 digest"):
        load_trace(tmp_path / "t")["ln_post"]


def test_manifest_schema_checks(tmp_path):
    write(tmp_path / "t")
    manifest = json.loads((tmp_path / "t" / MANIFEST).read_text())
    (tmp_path / "t" / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(wd.WhisperdiffError, match="newer whisperdiff.*upgrade"):
        load_trace(tmp_path / "t")
    (tmp_path / "t" / MANIFEST).write_text(json.dumps({**manifest, "schema": "something.else"}))
    with pytest.raises(wd.WhisperdiffError, match="not a whisperdiff trace manifest"):
        load_trace(tmp_path / "t")
    (tmp_path / "t" / MANIFEST).write_text("{ not json")
    with pytest.raises(wd.WhisperdiffError, match="not valid JSON"):
        load_trace(tmp_path / "t")


def test_listing_marks_incomplete_runs(tmp_path):
    write(tmp_path / "done")
    (tmp_path / ".half.partial-123" / "tensors").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    statuses = {item.path.name: item.status for item in list_traces(tmp_path)}
    assert statuses == {"done": "complete", ".half.partial-123": "incomplete"}
    with pytest.raises(wd.WhisperdiffError, match="not a trace"):
        load_trace(tmp_path / "empty")
    with pytest.raises(wd.WhisperdiffError, match="incomplete trace"):
        load_trace(tmp_path / ".half.partial-123")


def test_summary_statistics(tmp_path):
    with TraceWriter(tmp_path / "t", {"impl": "test", **PROVENANCE}) as w:
        w.record("ln_post", np.array([1.0, 2.0, 3.0, np.nan, np.inf], np.float32))
    row = load_trace(tmp_path / "t").summary().iloc[0]
    assert (row["mean"], row["min"], row["max"], row["nan"], row["inf"]) == (2.0, 1.0, 3.0, 1, 1)
    assert row["std"] == pytest.approx(np.std([1.0, 2.0, 3.0]))


def test_op_names_must_be_safe_file_names(tmp_path):
    with pytest.raises(wd.WhisperdiffError, match="not usable as a file name"):
        with TraceWriter(tmp_path / "t", {}) as w:
            w.record("../escape", np.zeros(1))
    assert not (tmp_path / "t").exists()


def test_a_manifest_cannot_point_outside_its_trace(tmp_path):
    with TraceWriter(tmp_path / "t", {"impl": "x", **PROVENANCE}) as w:
        w.record("conv1", np.ones((2, 3), np.float32))
    np.save(tmp_path / "outside.npy", np.zeros((2, 3), np.float32))
    manifest = json.loads((tmp_path / "t" / MANIFEST).read_text())
    manifest["ops"][0]["file"] = "../outside.npy"
    (tmp_path / "t" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(wd.WhisperdiffError, match="points outside the trace"):
        load_trace(tmp_path / "t")["conv1"]
