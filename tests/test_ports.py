"""Tracing users' own ports: the Tracer API (a NumPy encoder), plugins (--impl file.py:factory),
max.nn instrumentation (a max.nn encoder, unedited) and the weight-load check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_RANDOM, assert_one_line_error, run_cli

import whisperdiff as wd
from whisperdiff.gate.check import check
from whisperdiff.measure.tolerances import load_tolerances

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    # env given explicitly: once MAX is imported in this process, the C-level environment it leaves
    # makes a child python lose its virtual environment; os.environ still holds the original one.
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_en):
    return wd.trace("torch", model=tiny_en, out=tmp_path_factory.mktemp("ref") / "torch")


# -- Tracer: a NumPy encoder -----------------------------------------------------------------------
def test_numpy_encoder_traced_with_the_tracer_matches_torch(reference, tmp_path, tiny_en):
    run_example("numpy_encoder.py", "--out", str(tmp_path / "numpy"))
    t = wd.load_trace(tmp_path / "numpy")
    assert t.manifest["impl"] == "numpy" and t.manifest["model"]["weights_sha256"] == tiny_en.weights_sha256
    assert t.manifest["input"]["sha256"] == reference.manifest["input"]["sha256"] and t.ops == reference.ops
    c = wd.compare(reference, t, model=tiny_en)
    assert c.comparable and c.first_divergence is None and not c.findings, c.findings
    assert check(reference, t, load_tolerances("float32"), replay=False).passed


def test_numpy_encoder_with_a_planted_bug_is_localised(reference, tmp_path, tiny_en):
    run_example("numpy_encoder.py", "--bug", "no-pos-embed", "--out", str(tmp_path / "numpy-bug"))
    c = wd.compare(reference, tmp_path / "numpy-bug", model=tiny_en)
    assert c.first_divergence == "pos_embed" and c.findings[0].kind == "positional", c.findings[:2]


def test_tracer_refuses_bad_records_and_leaves_nothing(tmp_path, small_random):
    with pytest.raises(wd.WhisperdiffError, match=r"conv1: shape \[1, 64, 2999\]"):
        with wd.Tracer(tmp_path / "t", impl="mine", model=small_random) as t:
            t.record("conv1", np.zeros((1, 64, 2999), np.float32))
    with pytest.raises(wd.WhisperdiffError, match="record mel .* before any other op"):  # the port's own mel: first
        with wd.Tracer(tmp_path / "t", impl="mine", model=small_random) as t:
            t.record("conv1", np.zeros((1, 64, 3000), np.float32))
            t.record("mel", t.mel)
    with pytest.raises(wd.WhisperdiffError, match="floating-point"):
        with wd.Tracer(tmp_path / "t", impl="mine", model=small_random) as t:
            t.record("conv1", np.zeros((1, 64, 3000), np.int32))
    assert not any(tmp_path.iterdir())  # nothing half-written
    with wd.Tracer(tmp_path / "ok", impl="mine", model=small_random) as t:
        t.record("conv1", np.zeros((1, 3000, 64), np.float32))  # another layout of the same axes is fine
    assert wd.load_trace(tmp_path / "ok").ops == ["mel", "conv1"]


# -- plugins ---------------------------------------------------------------------------------------
def test_plugin_from_a_file(reference, tmp_path, tiny_en):
    out = tmp_path / "plugin"
    proc = run_cli("trace", "--impl", f"{EXAMPLES / 'numpy_encoder.py'}:make", "-o", str(out), check=True)
    assert "numpy_encoder.py:make on cpu" in proc.stdout
    c = wd.compare(reference, out, replay=False)
    assert c.first_divergence is None and wd.load_trace(out).manifest["taps"] == "plugin"
    assert_one_line_error(
        run_cli("trace", "--impl", "no.such.module:make", "-o", str(tmp_path / "x")), "importing no.such.module failed"
    )
    assert_one_line_error(
        run_cli("trace", "--impl", f"{EXAMPLES / 'numpy_encoder.py'}:nope", "-o", str(tmp_path / "x")),
        "no callable 'nope'",
    )
    assert_one_line_error(
        run_cli("trace", "--impl", "mine", "-o", str(tmp_path / "x")), "unknown implementation 'mine'"
    )
    assert not (tmp_path / "x").exists()


# -- max.nn instrumentation ------------------------------------------------------------------------
def test_instrument_maps_module_paths_without_compiling(small_random):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import max_nn_encoder as example
    finally:
        sys.path.pop(0)
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    d = small_random.dims

    def encoder():  # a module builds into one graph only: a fresh one per graph
        enc = example.Encoder(
            d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer, DeviceRef.CPU()
        )
        enc.load_state_dict(example.whisper_weights(small_random.state_dict))
        return enc

    enc = encoder()
    mel = TensorType(DType.float32, [1, d.n_mels, 3000], device=DeviceRef.CPU())
    with Graph("probe", input_types=[mel]) as graph, wd.instrument(enc, example.NAMES) as taps:
        graph.output(enc(graph.inputs[0].tensor), *taps.outputs)
    block = ["attn_ln", "attn.q", "attn.k", "attn.v", "attn.out", "mlp_ln", "mlp.fc1", "mlp.fc2", "out"]
    assert taps.names == ["conv1", "conv2", *[f"blocks.{i}.{op}" for i in range(2) for op in block], "ln_post"]
    enc = encoder()
    with Graph("unnamed", input_types=[mel]) as graph, wd.instrument(enc) as raw:  # no names: module paths
        graph.output(enc(graph.inputs[0].tensor), *raw.outputs)
    assert "blocks.0.attn.query" in raw.names and "blocks.1.mlp" in raw.names
    from max.nn.layer import layer

    assert raw._hook not in layer._LAYER_HOOKS and taps._hook not in layer._LAYER_HOOKS  # hooks removed


@pytest.mark.slow
def test_max_nn_encoder_instrumented_unedited_localises_its_bug(tmp_path):
    """Compiles one max.nn graph (small dims): the example's encoder with layer-norm eps 1e-3."""
    ref = wd.trace("torch", model=SMALL_RANDOM, out=tmp_path / "torch")
    run_example("max_nn_encoder.py", "--model", SMALL_RANDOM, "--bug", "ln-eps", "--out", str(tmp_path / "maxnn"))
    c = wd.compare(ref, tmp_path / "maxnn")
    assert c.comparable and c.first_divergence == "blocks.0.attn_ln", c.first_divergence
    assert {"conv1", "blocks.1.mlp.fc1", "ln_post"} <= set(wd.load_trace(tmp_path / "maxnn").ops)
    assert any(f.kind == "layer_norm_eps" for f in c.findings), c.findings
    assert c.table.loc["conv1", "rel_l2"] < 1e-5  # before the bug, the port agrees


# -- weights -----------------------------------------------------------------------------------------
def _port_weights(tiny_en, path, *, bugs=True, fused=False, drop=None, max_layout=True):
    """The encoder's weights as a MAX port would dump them: [in, out] linears, [1, k, in, out] convs, no
    `encoder.` prefix; with bugs, blocks.1.mlp.0.weight the other way round and blocks.2.attn.value.weight random."""
    out = {}
    for k, v in tiny_en.state_dict.items():
        if not k.startswith("encoder."):
            continue
        v = v.float().numpy()
        if max_layout:
            v = v.T if v.ndim == 2 and "positional" not in k else v.transpose(2, 1, 0)[None] if v.ndim == 3 else v
        out[k.removeprefix("encoder.")] = v
    if bugs:
        out["blocks.1.mlp.0.weight"] = out["blocks.1.mlp.0.weight"].T
        rng = np.random.default_rng(0)
        out["blocks.2.attn.value.weight"] = (
            rng.standard_normal(out["blocks.2.attn.value.weight"].shape).astype(np.float32) * 0.05
        )
    if fused:  # one [3C, C] q/k/v tensor per block (torch orientation), as many ports keep it
        for i in range(tiny_en.dims.n_audio_layer):
            p = f"blocks.{i}.attn."
            out[p + "qkv.weight"] = np.concatenate([out.pop(p + f"{x}.weight") for x in ("query", "key", "value")])
    if drop:
        out.pop(drop)
    np.savez(path, **out)
    return path


def test_weights_names_the_transposed_and_the_substituted_tensor(tiny_en, tmp_path):
    proc = run_cli("weights", "default", str(_port_weights(tiny_en, tmp_path / "port.npz")))
    assert proc.returncode == 1, proc.stderr
    flagged = [
        line.split()[:2]
        for line in proc.stdout.splitlines()
        if line.split()
        and line.split()[0]
        in ("missing", "substituted", "transposed", "scaled", "different", "layout", "shape", "unexpected")
    ]
    assert flagged == [
        ["substituted", "encoder.blocks.2.attn.value.weight:"],
        ["transposed", "encoder.blocks.1.mlp.0.weight:"],
    ]
    assert "65 of 67 tensors match" in proc.stdout


def test_weights_undoes_known_layouts(tiny_en, tmp_path):
    clean = run_cli("weights", "default", str(_port_weights(tiny_en, tmp_path / "ok.npz", bugs=False)))
    assert clean.returncode == 0 and "67 of 67 tensors match" in clean.stdout, clean.stdout
    fused = _port_weights(tiny_en, tmp_path / "fused.npz", bugs=False, fused=True, max_layout=False)
    proc = run_cli("weights", "default", str(fused))
    assert proc.returncode == 0 and "67 of 67 tensors match" in proc.stdout, proc.stdout
    missing = run_cli(
        "weights", "default", str(_port_weights(tiny_en, tmp_path / "m.npz", bugs=False, drop="ln_post.bias"))
    )
    assert missing.returncode == 1 and "missing     encoder.ln_post.bias" in missing.stdout
    assert_one_line_error(run_cli("weights", "default", str(tmp_path / "none.npz")), "does not exist")


def test_weights_matches_foreign_names_by_value_and_rules_use_the_printed_names(tiny_en, tmp_path):
    """transformers' names, no rename rules: B's tensors are matched to A's by the numbers they hold; a scaled
    one (its numbers are not A's) by shape and name. Rules written against the names the messages print work."""
    hf = {
        "attn.query": "self_attn.q_proj",
        "attn.key": "self_attn.k_proj",
        "attn.value": "self_attn.v_proj",
        "attn.out": "self_attn.out_proj",
        "attn_ln": "self_attn_layer_norm",
        "mlp.0": "fc1",
        "mlp.2": "fc2",
        "mlp_ln": "final_layer_norm",
    }
    out = {}
    for name, value in tiny_en.state_dict.items():
        if not name.startswith("encoder."):
            continue
        name = name.removeprefix("encoder.")
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
        name = f"layers.{m[1]}.{hf[m[2]]}.{m[3]}" if m else name.replace("positional_embedding", "embed_positions")
        out[name] = value.float().numpy()
    out["layers.1.fc1.weight"] = out["layers.1.fc1.weight"] * 0.5
    np.savez(tmp_path / "hf.npz", **out)
    proc = run_cli("weights", "default", str(tmp_path / "hf.npz"))
    assert proc.returncode == 1 and "66 of 67 tensors match" in proc.stdout, proc.stdout
    assert "B's names are not A's: 66 tensors matched to A's by value, 1 by shape and name" in proc.stdout
    assert "scaled      encoder.blocks.1.mlp.0.weight [layers.1.fc1.weight, matched by shape]" in proc.stdout
    # a rule against the printed name (B's odd.weight prints as encoder.odd.weight) is honoured
    named = {k: v for k, v in tiny_en.state_dict.items() if k.startswith("encoder.")}
    np.savez(
        tmp_path / "own.npz",
        **{
            ("odd.weight" if k == "encoder.ln_post.weight" else k.removeprefix("encoder.")): v.float().numpy()
            for k, v in named.items()
        },
    )
    (tmp_path / "rules.toml").write_text('[rename]\n"encoder.odd.weight" = "encoder.ln_post.weight"\n')
    proc = run_cli("weights", "default", str(tmp_path / "own.npz"), "--rename", str(tmp_path / "rules.toml"))
    assert proc.returncode == 0 and "67 of 67 tensors match" in proc.stdout, proc.stdout
