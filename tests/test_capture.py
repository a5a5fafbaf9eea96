"""Any port in, unedited (issue 14): capture every value of a MAX graph, preflight before the compile,
weights mapped by value, the port's own mel, automatic alignment. Everything here builds MAX graphs
but compiles none, except the one alignment test at the end (marked)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from max import nn
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, TensorValue, ops

import whisperdiff as wd
from whisperdiff.capture.graph_capture import capture
from whisperdiff.capture.preflight import preflight
from whisperdiff.mapping.automap import automap
from whisperdiff.mapping.maps import read_map
from whisperdiff.mapping.weightmap import from_rules, propose

EXAMPLES = Path(__file__).parent.parent / "examples"
CPU = DeviceRef.CPU()


def example(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))


# -- preflight: the six build-time mistakes of MAX's shipped encoder, without compiling -------------------
def test_preflight_names_each_mistake_of_maxs_shipped_encoder(small_random):
    pytest.importorskip("transformers", reason="max.pipelines needs the [ports] extra")
    ex = example("max_whisper_encoder")
    encoder_class = ex.shipped_encoder_class()  # imported as shipped, unedited
    config = ex.whisper_config(small_random.dims)
    d = small_random.dims
    report = preflight(
        lambda: encoder_class(config, DType.float32, CPU),
        small_random,
        workaround=lambda: setattr(config, "n_heads", config.encoder_attention_heads),
    )
    by_kind = {f.kind: f.message for f in report.findings}
    assert sorted(by_kind) == ["broadcast", "config", "conv-layout", "permute", "weight-layout", "weight-names"], (
        by_kind
    )
    assert "reads WhisperConfig.n_heads" in by_kind["config"] and "encoder_attention_heads" in by_kind["config"]
    assert by_kind["conv-layout"].startswith(
        f"conv1 reads [1, {d.n_mels}, 3000] as {d.n_mels} time steps of 3000 "
        "channels: Whisper's mel is [B, n_mels, T]; this Conv1D wants [B, T, C]"
    )
    assert f"[3, {d.n_mels}, {d.n_audio_state}] ([k, in, out])" in by_kind["weight-layout"]
    assert f"[{d.n_audio_state}, {d.n_mels}, 3] ([out, in, k])" in by_kind["weight-layout"]
    assert re.search(r"the module's layers\.0\.\S+ is the checkpoint's encoder\.blocks\.0\.", by_kind["weight-names"])
    assert (
        "symbolic length ((num_mel_bins + 1) // 2)" in by_kind["broadcast"]
        and f"{d.n_audio_ctx} positions" in by_kind["broadcast"]
    )
    assert "permute it to [B, T, C]" in by_kind["permute"] and "commented out" in by_kind["permute"]
    assert all("\n" not in line for line in report.lines()) and len(report.lines()) == 6


def test_preflight_of_the_fixed_copy_leaves_only_what_the_weight_map_handles(small_random):
    pytest.importorskip("transformers", reason="max.pipelines needs the [ports] extra")
    ex = example("max_whisper_encoder")
    fixed = ex.fixed_encoder_module(None)
    report = preflight(
        lambda: fixed.WhisperEncoder(ex.whisper_config(small_random.dims), DType.float32, CPU), small_random
    )
    assert report.blocking == [] and {f.kind for f in report.findings} == {"weight-names", "weight-layout"}
    # the module builds again after preflight (its weights were released from preflight's graphs)
    with (
        Graph("again", input_types=list(report.module.input_types())) as graph,
        capture(report.module, select="canonical", dims=small_random.dims) as cap,
    ):
        graph.output(*report.module(graph.inputs[0].tensor))
    assert cap.error is None and cap.n_outputs == 1 and len(cap.chosen) > 40


class Wrong(nn.Module):
    """A user's module whose second Linear expects the wrong width."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(80, 32, DType.float32, CPU, has_bias=True)
        self.second = nn.Linear(16, 8, DType.float32, CPU, has_bias=False)

    def __call__(self, x: TensorValue) -> TensorValue:
        return self.second(ops.gelu(self.first(ops.permute(x, [0, 2, 1]))))


def test_a_failing_build_is_named_in_one_line_and_what_was_captured_is_kept(small_random):
    from whisperdiff.capture.preflight import PreflightReport, check_build

    report = PreflightReport()
    cap = check_build(Wrong(), [TensorType(DType.float32, [1, 80, 3000], device=CPU)], small_random.dims, report)
    (finding,) = report.findings
    assert finding.kind == "build" and "second at tests/test_capture.py:" in finding.message
    assert (
        "matmul failed on [1, 3000, 32], [16, 8]: Matrix multiplication" in finding.message
        and "\n" not in finding.message
    )
    ops_seen = [c.op for c in cap.values]
    assert "gelu" in ops_seen and "permute" in ops_seen or "transpose" in ops_seen
    first = next(c for c in cap.values if c.key == "first")
    assert first.shape == (1, 3000, 32) and first.where.startswith("tests/test_capture.py:")


def test_capture_records_every_op_with_its_module_path_and_the_users_line(small_random):
    ex = example("max_nn_encoder")
    d = small_random.dims
    enc = ex.Encoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer, CPU)
    enc.load_state_dict(ex.whisper_weights(small_random.state_dict))
    with (
        Graph("probe", input_types=[TensorType(DType.float32, [1, d.n_mels, 3000], device=CPU)]) as graph,
        capture(enc) as cap,
    ):
        graph.output(enc(graph.inputs[0].tensor), *cap.outputs("blocks.*.mlp:gelu#0"))
    keys = [c.key for c in cap.values]
    assert "blocks.0.attn.query" in keys and "blocks.1.mlp:gelu#0" in keys and "gelu#0" in keys  # conv1.gelu: no module
    assert [c.key for c in cap.chosen] == [f"blocks.{i}.mlp:gelu#0" for i in range(d.n_audio_layer)]
    gelu = next(c for c in cap.values if c.key == "gelu#0")
    assert gelu.where.startswith("examples/max_nn_encoder.py:") and gelu.inputs_of == ["conv2"]
    canonical = {c.key for c in cap.select("canonical", d)}
    assert {"conv1", "gelu#0", "blocks.0.attn:reshape#3", "ln_post"} <= canonical
    with pytest.raises(wd.WhisperdiffError, match="matches no captured value"):
        cap.select("nothing.*")


# -- weights by value ---------------------------------------------------------------------------------
def test_weight_map_finds_transposed_permuted_and_fused_weights_by_value(small_random, tmp_path):
    ref = {k: v.float().numpy() for k, v in small_random.state_dict.items() if k.startswith("encoder.")}
    port = {}
    for k, v in ref.items():
        name = (
            k.replace("encoder.blocks.", "layers.")
            .replace(".attn.", ".sa.")
            .replace("mlp.0", "up")
            .replace("mlp.2", "down")
        )
        if k.endswith(("conv1.weight", "conv2.weight")):
            v = v.transpose(2, 1, 0)  # [k, in, out]
        elif k.endswith("mlp.0.weight"):
            v = v.T  # [in, out]
        port[name] = v
    for i in range(small_random.dims.n_audio_layer):  # fused q/k/v, [3C, C]
        port[f"layers.{i}.sa.qkv.weight"] = np.concatenate(
            [port.pop(f"layers.{i}.sa.{p}.weight") for p in ("query", "key", "value")]
        )
    m = propose(port, ref)
    assert not m.unmatched_reference and not m.unmatched_port and all(x.basis == "value" for x in m.matches)
    layouts = {x.reference: x.layout for x in m.matches}
    assert (
        layouts["encoder.conv1.weight"] == "permuted (2, 1, 0)"
        and layouts["encoder.blocks.1.mlp.0.weight"] == "transposed"
    )
    assert layouts["encoder.blocks.0.attn.key.weight"] == "part 2 of 3 along axis 0 (fused)"
    rules = m.rules()  # one `*` per block index, on both sides
    assert rules["encoder.blocks.*.attn.query.weight"] == {
        "name": "layers.*.sa.qkv.weight",
        "layout": "part 1 of 3 along axis 0 (fused)",
    }
    assert rules["encoder.blocks.*.mlp.2.bias"] == "layers.*.down.bias"
    loaded = m.load(ref)  # the reference loaded into the port's names and layouts
    assert set(loaded) == set(port) and all(np.array_equal(loaded[k], port[k]) for k in port)
    m.write(tmp_path / "port.map.toml")
    again = from_rules(read_map(tmp_path / "port.map.toml")["weights"], ref)
    assert all(np.array_equal(again.load(ref)[k], port[k]) for k in port)


def test_weight_map_by_shape_and_name_when_the_port_holds_no_values(small_random):
    ref = {k: v.float().numpy() for k, v in small_random.state_dict.items() if k.startswith("encoder.")}
    shapes = {
        k.replace("encoder.blocks.", "layers.")
        .replace("attn.query", "self_attn.q_proj")
        .replace("attn.key", "self_attn.k_proj")
        .replace("attn.value", "self_attn.v_proj")
        .replace("attn.out", "self_attn.out_proj"): tuple(v.shape)
        for k, v in ref.items()
    }
    m = propose(shapes, ref)
    assert not m.unmatched_reference and all(x.basis == "shape" for x in m.matches)
    by_ref = m.by_reference()
    assert by_ref["encoder.blocks.1.attn.key.weight"].port == "layers.1.self_attn.k_proj.weight"
    assert by_ref["encoder.blocks.1.attn.value.weight"].port == "layers.1.self_attn.v_proj.weight"


# -- the port's own mel --------------------------------------------------------------------------------
def test_the_ports_own_mel_is_recorded_and_compared_with_whispers_frontend(small_random, tmp_path):
    with wd.Tracer(tmp_path / "own", impl="mine", model=small_random) as t:
        port_mel = (t.mel * 1.05).astype(np.float32)  # a frontend that scales the log-mel by 5 %
        t.record("mel", port_mel)
        t.record("conv1", np.zeros((1, small_random.dims.n_audio_state, 3000), np.float32))
    trace = wd.load_trace(tmp_path / "own")
    assert np.array_equal(trace["mel"], port_mel) and trace.ops == ["mel", "conv1"]
    inp = trace.manifest["input"]
    assert (
        inp["frontend"].startswith("the port's own") and inp["whisper_frontend"] == "whisper.audio.log_mel_spectrogram"
    )
    assert inp["port_mel_vs_whisper"]["rel_l2"] == pytest.approx(0.05, rel=1e-3)
    with wd.Tracer(tmp_path / "whisper", impl="mine", model=small_random) as t:  # not recorded: Whisper's
        whisper_mel = t.mel
    assert np.array_equal(wd.load_trace(tmp_path / "whisper")["mel"], whisper_mel)


# -- what cannot be aligned is listed, not a crash -----------------------------------------------------------
def test_a_capture_of_a_model_that_is_not_whisper_gets_a_listing(small_random):
    class NotWhisper(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(7, 5, DType.float32, CPU)

        def __call__(self, x):
            return ops.tanh(self.proj(x))

    module = NotWhisper()
    with (
        Graph("other", input_types=[TensorType(DType.float32, [2, 10, 7], device=CPU)]) as graph,
        capture(module) as cap,
    ):
        graph.output(module(graph.inputs[0].tensor))
    assert cap.select("canonical", small_random.dims) == []
    values = {c.key: np.ones([int(x) for x in c.shape], np.float32) for c in cap.values if c.static}
    amap = automap(cap.values, values, reference=None, dims=small_random.dims)
    assert amap.matches == [] and len(amap.unmatched) == len(wd.select_taps(small_random.dims)) - 1
    assert amap.lines()[-1].startswith(f"not aligned ({len(amap.unmatched)}): conv1, conv1.gelu, conv2")
    assert amap.summary().startswith(f"aligned 0/{len(amap.unmatched)} canonical ops")


# -- alignment with no names (compiles one small graph) --------------------------------------------------
@pytest.mark.slow
def test_the_max_nn_example_captured_with_no_names_aligns_every_op(tmp_path, small_random):
    import os
    import subprocess

    from conftest import SMALL_RANDOM

    ref = tmp_path / "torch"
    wd.trace("torch", model=small_random, out=ref)
    out = tmp_path / "auto"
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "align_without_names.py"),
            "maxnn",
            "--model",
            SMALL_RANDOM,
            "--reference",
            str(ref),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(wd.select_taps(small_random.dims)) - 1  # every default op but mel (the input)
    assert f"aligned {n}/{n} canonical ops" in proc.stdout and "by value" in proc.stdout, proc.stdout[-2000:]
    trace = wd.load_trace(out)
    assert trace.ops == wd.select_taps(small_random.dims)
    assert wd.check(wd.load_trace(ref), trace, wd.load_tolerances("float32")).passed
    # the map it wrote aligns the same values again with no reference at all, by key alone
    saved = read_map(f"{out}.map.toml")["ops"]
    assert saved["blocks.*.attn.q"] == "blocks.*.attn.query" and saved["blocks.*.attn.wv"] == "blocks.*.attn:reshape#3"


def test_compare_says_when_the_observer_effect_explains_a_divergence(default_trace, tiny_en, tmp_path):
    effect = {"output": "the graph's own first output, tapped vs untapped", "max_abs": 3e-3, "rel_l2": 5e-4}
    rng = np.random.default_rng(0)
    with wd.Tracer(tmp_path / "b", impl="port", model=tiny_en, info={"observer_effect": effect}) as t:
        for name in default_trace.ops[1:]:
            value = np.array(default_trace[name])
            if name == "ln_post":  # a divergence of the observer effect's size, at the output only
                value = value + rng.standard_normal(value.shape).astype(np.float32) * 1e-3 * float(value.std())
            t.record(name, value)
    c = wd.compare(default_trace, tmp_path / "b", replay=False)
    assert c.first_divergence == "ln_post"
    note = next(w for w in c.warnings if w.startswith("observer effect"))
    assert "rel L2 5.0e-04" in note and "enough to explain the divergence at ln_post" in note
