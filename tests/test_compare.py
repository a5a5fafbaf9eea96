"""compare: metrics, alignment, replay and findings on real traces and on real traces edited on purpose.

The edited candidates are written with the real TraceWriter from a real torch trace, each with one
known change, so every assertion says what compare must find for that change.
"""

import json

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

    b = edited(ref, tmp_path / "b", lambda name, x: (1.5 * x).astype(np.float32) if name == "blocks.0.mlp.fc2" else x)
    numpy_path = compare(ref, b)
    monkeypatch.setattr(compare_module, "ONEPASS_BYTES", 0)
    calls = []
    monkeypatch.setattr(compare_module, "op_metrics", lambda *a, **k: calls.append(k["onepass"]) or op_metrics(*a, **k))
    kernel = compare(ref, b)
    assert calls and all(calls)
    assert kernel.first_divergence == numpy_path.first_divergence == "blocks.0.mlp.fc2"
    assert [(f.kind, f.op) for f in kernel.findings] == [(f.kind, f.op) for f in numpy_path.findings]
    for column in ("rel_l2", "cosine", "max_abs"):
        assert kernel.table[column].tolist() == pytest.approx(numpy_path.table[column].tolist(), rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("loaded", [False, True], ids=["checked-while-the-kernel-loads", "checked-in-the-loop"])
def test_gigabyte_pairs_still_refuse_a_damaged_op(ref, tmp_path, monkeypatch, loaded):
    """While the one-pass kernel loads, compare checks ops' digests ahead of its loop: a flipped bit in the
    last op is the one-line damage error whether that check or the loop meets it."""
    from concurrent.futures import Future

    from whisperdiff.analysis import compare as compare_module

    b = edited(ref, tmp_path / "b")
    file = tmp_path / "b" / "tensors" / "ln_post.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    loading = Future()  # never done: the check ahead goes through every op
    if loaded:
        loading.set_result(None)  # done at once: the loop meets the op
    monkeypatch.setattr(compare_module, "ONEPASS_BYTES", 0)
    monkeypatch.setattr(compare_module, "load_onepass", lambda: loading)
    with pytest.raises(wd.WhisperdiffError, match="op 'ln_post'.*does not match its xxh3_128 digest"):
        compare(ref, b)


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
