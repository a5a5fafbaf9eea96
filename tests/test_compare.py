"""compare: metrics, alignment, replay and findings on real traces and on real traces edited on purpose.

The edited candidates are written with the real TraceWriter from a real torch trace, each with one
known change, so every assertion says what compare must find for that change.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

import whisperdiff as wd
from whisperdiff.analysis.compare import compare
from whisperdiff.measure.metrics import op_metrics


@pytest.fixture(scope="module")
def ref(tmp_path_factory, small_random):
    return wd.trace("torch", model=small_random, out=tmp_path_factory.mktemp("ref") / "torch")


def edited(ref: wd.Trace, out, edit=None, rename=None, drop=(), manifest=None):
    """A copy of `ref` with `edit(name, array) -> array` applied and ops renamed or dropped."""
    m = {k: v for k, v in ref.manifest.items() if k not in ("ops", "schema", "schema_version", "created")}
    m.update(manifest or {})
    with wd.TraceWriter(out, m) as writer:
        for name in ref.ops:
            if name in drop:
                continue
            array = np.array(ref[name])
            writer.record((rename or {}).get(name, name), edit(name, array) if edit else array)
    return wd.load_trace(out)


def test_metrics_of_known_differences():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 50, 8)).astype(np.float32)
    m = op_metrics(a, -a, layout="B,T,C")
    assert m["cosine"] == pytest.approx(-1) and m["rel_l2"] == pytest.approx(2)
    b = a.copy()
    b[0, 17, 3] += 5
    m = op_metrics(a, b, layout="B,T,C")
    assert m["worst_step"] == 17 and m["max_abs_index"] == [0, 17, 3] and m["max_abs"] == pytest.approx(5)
    assert m["mismatch_share"] == pytest.approx(1 / a.size)
    m = op_metrics(a, 2 * a, layout="B,T,C")
    assert m["std_ratio"] == pytest.approx(2) and m["cosine"] == pytest.approx(1) and m["snr_db"] == pytest.approx(0)
    b = a.copy()
    b[0, 0, :2] = [np.nan, np.inf]
    m = op_metrics(a, b, layout="B,T,C")
    assert (m["nan_b"], m["inf_b"], m["nan_a"]) == (1, 1, 0) and np.isfinite(m["rel_l2"])


def test_identical_traces_are_clean(ref):
    result = compare(ref, ref)
    assert result.first_divergence is None and result.findings == [] and result.comparable
    assert (result.table["rel_l2"] == 0).all()


def test_layouts_are_matched_and_noted(ref, tmp_path):
    def edit(name, x):
        if name == "conv1":
            return x.transpose(0, 2, 1)  # time-major, as a port might store it
        if name == "blocks.0.attn.q":
            return x.reshape(1, 1500, 2, 32)  # heads split
        return x

    result = compare(ref, edited(ref, tmp_path / "b", edit))
    assert result.first_divergence is None
    layouts = {f.op: f for f in result.findings if f.kind == "layout"}
    assert set(layouts) == {"conv1", "blocks.0.attn.q"} and all(f.severity == "info" for f in layouts.values())


def test_rename_rules_map_another_implementations_names(ref, tmp_path):
    names = {n: n.replace("blocks.", "encoder.layers.").replace("attn.q", "self_attn.q_proj") for n in ref.ops}
    b = edited(ref, tmp_path / "b", rename=names)
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[rename]\n"encoder.layers.*.self_attn.q_proj" = "blocks.*.attn.q"\n"encoder.layers.*.*" = "blocks.*.*"\n'
    )
    result = compare(ref, b, rename=rules)
    assert result.first_divergence is None and result.findings == []
    unmapped = compare(ref, b)
    assert unmapped.findings[0].kind == "missing_op" and any("only in B" in w for w in unmapped.warnings)


def test_missing_op_is_a_finding_not_a_crash(ref, tmp_path):
    result = compare(ref, edited(ref, tmp_path / "b", drop=("blocks.0.mlp.fc1",)))
    assert result.first_divergence == "blocks.0.mlp.fc1"
    assert [(f.kind, f.op) for f in result.findings] == [("missing_op", "blocks.0.mlp.fc1")]


@pytest.mark.parametrize(
    "op, change, kind",
    [
        ("blocks.0.mlp.fc2", lambda x: -x, "sign_flip"),
        ("blocks.0.mlp.fc2", lambda x: 1.5 * x, "scale_mismatch"),
        ("blocks.1.attn.q", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), "nonfinite"),
        ("blocks.1.attn.v", lambda x: x + 0.5 * x.std(), "bias_shift"),
    ],
)
def test_edited_op_is_found_and_named(ref, tmp_path, op, change, kind):
    b = edited(ref, tmp_path / "b", lambda name, x: change(x).astype(np.float32) if name == op else x)
    result = compare(ref, b)
    assert result.first_divergence == op
    assert (result.findings[0].kind, result.findings[0].op) == (kind, op), result.findings[0]
    assert len([f for f in result.findings if f.severity == "error"]) == 1  # later ops only inherit it


def test_gigabyte_pairs_take_the_one_pass_metrics_and_find_the_same(ref, tmp_path, monkeypatch):
    """Past ONEPASS_BYTES (both traces together) compare's metrics come from the compiled one-pass kernel:
    shown here by lowering the bar to this small pair, whose every number and finding stays the same."""
    from whisperdiff.analysis import compare as compare_module
    from whisperdiff.measure import metrics

    b = edited(ref, tmp_path / "b", lambda name, x: (1.5 * x).astype(np.float32) if name == "blocks.0.mlp.fc2" else x)
    calls = []
    kernel = metrics._onepass
    monkeypatch.setattr(metrics, "_onepass", lambda *a: calls.append(a[0].shape) or kernel(*a))
    numpy_path = compare(ref, b)
    assert calls == []
    monkeypatch.setattr(compare_module, "ONEPASS_BYTES", 0)
    one_pass = compare(ref, b)
    float32_ops = [op for op in ref.ops if ref.info(op)["dtype"] == "float32"]
    assert len(calls) >= len(float32_ops) > 0  # every float32 op, a chunk at a time
    assert one_pass.first_divergence == numpy_path.first_divergence == "blocks.0.mlp.fc2"
    assert [(f.kind, f.op) for f in one_pass.findings] == [(f.kind, f.op) for f in numpy_path.findings]
    for column in ("rel_l2", "cosine", "max_abs"):
        assert one_pass.table[column].tolist() == pytest.approx(numpy_path.table[column].tolist(), rel=1e-5, abs=1e-12)


def test_where_the_kernel_cannot_be_had_compare_measures_by_numpy_and_says_so(ref, tmp_path):
    """A machine where numba cannot compile the kernel (here NUMBA_DISABLE_JIT, nothing kept in the cache):
    a gigabyte compare measures by numpy, with the numpy path's very figures, and a warning says so."""
    b = edited(ref, tmp_path / "b", lambda name, x: (1.5 * x).astype(np.float32) if name == "blocks.0.mlp.fc2" else x)
    child = """
import json, sys
from whisperdiff.analysis import compare as compare_module
compare_module.ONEPASS_BYTES = 0
r = compare_module.compare(sys.argv[1], sys.argv[2])
print(json.dumps({"warnings": r.warnings, "rel_l2": r.table["rel_l2"].tolist(), "first": r.first_divergence}))
"""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", child, str(ref.path), str(b.path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    numpy_path = compare(ref, b)
    assert got["first"] == numpy_path.first_divergence == "blocks.0.mlp.fc2"
    assert got["rel_l2"] == numpy_path.table["rel_l2"].tolist()  # the numpy path's own figures
    assert [w for w in got["warnings"] if "one-pass kernel could not be had" in w]
    assert not [w for w in numpy_path.warnings if "one-pass kernel" in w]


@pytest.mark.parametrize("onepass", [False, True], ids=["numpy", "one-pass-loading"])
def test_a_damaged_op_read_ahead_is_refused_and_the_first_in_order_named(ref, tmp_path, monkeypatch, onepass):
    """compare's ops are read, checked and measured a few ops ahead of its loop, a chunk at a time
    (analysis/measuring.py). A flipped bit in an op's last chunk is the one-line damage error; with two
    neighbouring ops damaged, the one named is the first in order, whichever a worker reached first; and
    with the one-pass kernel still loading while the first ops are read, the same."""
    import threading
    from concurrent.futures import Future

    from whisperdiff.analysis import compare as compare_module

    first = "blocks.0.mlp.fc2"
    second = ref.ops[ref.ops.index(first) + 1]
    b = edited(ref, tmp_path / "b")
    for op in (first, second):
        file = tmp_path / "b" / "tensors" / f"{op}.npy"
        data = bytearray(file.read_bytes())
        data[-1 if op == first else -ref.info(op)["nbytes"]] ^= 0xFF  # first: its last byte; second: its first
        file.write_bytes(bytes(data))
    if onepass:
        loading = Future()
        threading.Timer(0.3, loading.set_result, [None]).start()  # the kernel "loads" while the first ops are read
        monkeypatch.setattr(compare_module, "ONEPASS_BYTES", 0)
        monkeypatch.setattr(compare_module, "load_onepass", lambda: loading)
    with pytest.raises(wd.WhisperdiffError, match=f"op '{first}'.*does not match its xxh3_128 digest"):
        compare(ref, b)


@pytest.mark.parametrize("onepass", [False, True], ids=["numpy", "one-pass"])
def test_ops_measured_ahead_a_chunk_at_a_time_equal_op_metrics_of_the_mapped_arrays(ref, tmp_path, onepass):
    """Every matched op measured by MeasureAhead (B's op streamed through a worker's small buffers, or mapped
    where its layout needs that) gives exactly op_metrics' figures on the two mapped arrays: the chunks are
    the same, so the sums are; so does an op measured on the caller's thread once the read-ahead is closed."""
    from whisperdiff.analysis.compare import _specs
    from whisperdiff.analysis.measuring import MeasureAhead, OpJob
    from whisperdiff.store.trace import Trace

    rng = np.random.default_rng(3)
    b = edited(ref, tmp_path / "b", lambda name, x: x + rng.standard_normal(x.shape).astype(x.dtype) * 1e-3)
    layouts = {s["name"]: s.get("layout") for s in _specs(ref.manifest)}
    jobs = [
        OpJob(op, op, None, {"layout": layouts.get(op), "atol": 1e-5, "rtol": 1e-3, "onepass": onepass})
        for op in ref.ops
    ]
    read_whole = []
    tb = Trace(b.path)
    tb.read = lambda name: read_whole.append(name) or Trace.read(tb, name)  # the mapped path, where it is taken
    ahead = MeasureAhead(Trace(ref.path), tb, jobs)
    streamed = [op for op in ref.ops if (layouts.get(op) or "").startswith("B,T")]
    assert streamed  # most ops: [1, T, C]
    for op in ref.ops:
        got = ahead.get(op)
        want = op_metrics(ref[op], b[op], **jobs[ref.ops.index(op)].options)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{op} {key}")
    assert not set(read_whole) & set(streamed)
    ahead.close()
    late = MeasureAhead(Trace(ref.path), tb, jobs)
    late.close()  # as compare does when its replay begins: the last op was never read ahead
    got, want = late.get(jobs[-1].name), op_metrics(ref[jobs[-1].name], b[jobs[-1].name], **jobs[-1].options)
    for key in want:  # measured on this thread, mapped, to the same figures
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"after close: {key}")


def test_shape_mismatch(ref, tmp_path):
    b = edited(ref, tmp_path / "b", lambda name, x: x[:, :, :100] if name == "conv2" else x)
    result = compare(ref, b)
    assert result.first_divergence == "conv2" and result.findings[0].kind == "shape_mismatch"


def test_different_weights_are_not_comparable(ref, tmp_path):
    other = wd.trace("torch", model=ref.manifest["model"]["id"] + ",seed=7", out=tmp_path / "other")
    result = compare(ref, other)
    assert not result.comparable and result.findings[0].kind == "weights_mismatch"
    assert any(w.startswith("NOT COMPARABLE: different weights") for w in result.warnings)


def test_without_replay_findings_come_from_metrics(ref, tmp_path):
    b = edited(ref, tmp_path / "b", lambda name, x: 1.5 * x if name == "blocks.0.mlp.fc2" else x)
    result = compare(ref, b, replay=False)
    assert result.first_divergence == "blocks.0.mlp.fc2" and result.findings[0].kind == "scale_mismatch"
    assert result.table["introduced_rel_l2"].isna().all()


def test_cli_compare_json_and_csv(ref, tmp_path):
    b = edited(ref, tmp_path / "b", lambda name, x: -x if name == "blocks.0.mlp.fc2" else x)
    proc = run_cli("compare", str(ref.path), str(b.path), "--json", "--csv", str(tmp_path / "ops.csv"), check=True)
    data = json.loads(proc.stdout)
    assert {"first_divergence", "ops", "findings", "comparable", "warnings"} <= set(data)
    assert data["first_divergence"] == "blocks.0.mlp.fc2" and data["findings"][0]["kind"] == "sign_flip"
    assert {"op", "cosine", "rel_l2", "max_abs", "mean_a", "std_a", "mean_b", "std_b"} <= set(data["ops"][0])
    assert (tmp_path / "ops.csv").read_text().splitlines()[0].startswith("op,status,diverged,failures,cosine")
    table = run_cli("compare", str(ref.path), str(b.path), check=True).stdout
    assert "first divergence: blocks.0.mlp.fc2" in table and "sign_flip at blocks.0.mlp.fc2" in table


def test_cli_compare_bad_input(ref, tmp_path):
    assert_one_line_error(run_cli("compare", str(ref.path), str(tmp_path / "nope")), "nope")
    bad = tmp_path / "rules.json"
    bad.write_text("{not json")
    assert_one_line_error(run_cli("compare", str(ref.path), str(ref.path), "--rename", str(bad)), "not valid")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_numpy_rounding_to_half_precision_is_torchs(dtype):
    """The precision floor is computed in NumPy (compare need not import torch); it must round as torch does."""
    import torch

    from whisperdiff.measure.metrics import round_to

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * np.exp(rng.uniform(-30, 30, 200_000))).astype(np.float32)
    x[:5] = [np.inf, -np.inf, np.nan, 0.0, 65520.0]
    want = torch.from_numpy(x).to(getattr(torch, dtype)).float().numpy()
    assert np.array_equal(round_to(x, dtype), want, equal_nan=True)
