"""Any port, hands-off, and a bug is never aligned away (issue 22): a torch port captured as it runs
(transformers' WhisperEncoder with the tiny.en checkpoint, loaded through preflight's weight map), the
port's own output always compared, alignment by what each op reads, missing ops named as missing.
One MAX test at the end compiles one small graph (a max.nn port whose output is scaled after ln_post)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import whisperdiff as wd
from whisperdiff.capture.captured_trace import trace_captured

pytest.importorskip("transformers", reason="the torch port is transformers' WhisperEncoder ([ports] extra)")
from transformers import WhisperConfig  # noqa: E402
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples"


def hf_config(dims) -> WhisperConfig:
    return WhisperConfig(
        num_mel_bins=dims.n_mels,
        encoder_layers=dims.n_audio_layer,
        encoder_attention_heads=dims.n_audio_head,
        d_model=dims.n_audio_state,
        encoder_ffn_dim=4 * dims.n_audio_state,
        max_source_positions=dims.n_audio_ctx,
        activation_function="gelu",
    )


@pytest.fixture(scope="module")
def hf_port(tiny_en):
    """transformers' encoder, unedited, holding the checkpoint through the map preflight proposes."""
    report = wd.preflight(lambda: WhisperEncoder(hf_config(tiny_en.dims)), tiny_en)
    assert report.blocking == [], report.lines()
    return report.module.eval()


def fresh(hf_port, tiny_en) -> WhisperEncoder:
    port = WhisperEncoder(hf_config(tiny_en.dims)).eval()
    port.load_state_dict(hf_port.state_dict())
    return port


def head_zeroed(hf_port, tiny_en) -> WhisperEncoder:
    """The port with head 1 of block 1 zeroed between p @ v and the output projection."""
    port = fresh(hf_port, tiny_en)
    d_head = tiny_en.dims.n_audio_state // tiny_en.dims.n_audio_head

    def zero_head(module, args):
        x = args[0].clone()
        x[..., d_head : 2 * d_head] = 0
        return (x,)

    port.layers[1].self_attn.out_proj.register_forward_pre_hook(zero_head)
    return port


def capture_and_compare(port, tiny_en, reference, out):
    cap = wd.mark_all(port, dims=tiny_en.dims)
    amap = trace_captured(
        out, cap, lambda mel: port(torch.from_numpy(mel)), model=tiny_en, impl="hf", reference=reference
    )
    return amap, wd.compare(reference, out)


def kinds_at(c) -> dict[str, str]:
    return {f.op: f.kind for f in c.findings if f.severity == "error"}


def test_a_clean_torch_port_aligns_every_op_hands_off_and_passes(hf_port, tiny_en, default_trace, tmp_path):
    amap, c = capture_and_compare(hf_port, tiny_en, default_trace, tmp_path / "clean")
    assert amap.unmatched == [] and len(amap.matches) == len(wd.select_taps(tiny_en.dims)) - 1
    assert amap.by_name["blocks.0.attn.q"].key == "layers.0.self_attn.q_proj"  # module paths from the port
    assert amap.by_name["ln_post"].basis == "output"  # the port's own output, always
    assert c.first_divergence is None and c.findings == [] and amap.notes == []
    assert any("optional ops of A are not aligned from a capture" in w for w in c.warnings)  # not "trace --taps all"
    assert wd.check(default_trace, c.b, wd.load_tolerances("float32")).passed


def test_a_port_that_scales_its_output_after_the_last_layer_norm_never_reads_clean(
    hf_port, tiny_en, default_trace, tmp_path
):
    port = fresh(hf_port, tiny_en)
    forward = port.forward
    port.forward = lambda *a, **k: (forward(*a, **k).last_hidden_state * 0.234,)
    amap, c = capture_and_compare(port, tiny_en, default_trace, tmp_path / "scaled")
    assert amap.by_name["ln_post"].key == "mul#0"  # not the layer norm's value, which agrees with the reference
    assert c.first_divergence == "ln_post" and kinds_at(c) == {"ln_post": "scale_mismatch"}
    assert "0.234" in next(f.message for f in c.findings if f.kind == "scale_mismatch")
    after = next(f for f in c.findings if f.kind == "port_output")
    assert "after it the port applies mul (tests/test_port_capture.py:" in after.message and after.severity == "warning"
    assert not wd.check(default_trace, c.b, wd.load_tolerances("float32")).passed


def test_a_port_without_its_final_layer_norm_gets_missing_op(hf_port, tiny_en, default_trace, tmp_path):
    port = fresh(hf_port, tiny_en)
    port.layer_norm = torch.nn.Identity()
    _, c = capture_and_compare(port, tiny_en, default_trace, tmp_path / "no-ln")
    assert c.first_divergence == "ln_post" and kinds_at(c) == {"ln_post": "missing_op"}


def test_a_torch_port_left_in_train_mode_is_called_random_not_a_bug_at_one_op(
    hf_port, tiny_en, default_trace, tmp_path
):
    port = WhisperEncoder(hf_config(tiny_en.dims))
    port.config.dropout = port.dropout = 0.1
    port.load_state_dict(hf_port.state_dict())
    port.train()  # the classic slip: no .eval(), so dropout stays on
    _, c = capture_and_compare(port, tiny_en, default_trace, tmp_path / "train")
    assert c.first_divergence is not None
    top = next(f for f in c.findings if f.severity == "error")
    assert top.kind == "stochastic" and "train mode" in top.message and "model.eval()" in top.message, top.message


def test_a_bug_after_the_value_that_agrees_is_found_where_it_acts(hf_port, tiny_en, default_trace, tmp_path):
    """One head zeroed between p @ v and the output projection: the value just before the bug agrees with
    the reference's attn.wv, but the output projection reads the zeroed one, and that is attn.wv."""
    port = head_zeroed(hf_port, tiny_en)
    amap, c = capture_and_compare(port, tiny_en, default_trace, tmp_path / "head")
    assert amap.by_name["blocks.1.attn.wv"].basis == "dataflow"
    assert any("blocks.1.attn.wv: aligned by dataflow" in n and "by value it was" in n for n in amap.notes)
    assert c.first_divergence == "blocks.1.attn.wv" and kinds_at(c) == {"blocks.1.attn.wv": "head_missing"}
    assert "head 1 of 6 contributes nothing" in next(f.message for f in c.findings if f.kind == "head_missing")
    assert any(w.startswith("alignment: blocks.1.attn.wv") for w in c.warnings)  # said, not hidden


def test_an_op_of_another_kind_is_aligned_by_what_reads_it(hf_port, tiny_en, default_trace, tmp_path):
    """Quick GELU is a mul, no gelu op: fc2 reads it, so it is blocks.1.mlp.gelu."""

    class QuickGelu(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    port = fresh(hf_port, tiny_en)
    port.layers[1].activation_fn = QuickGelu()
    _, c = capture_and_compare(port, tiny_en, default_trace, tmp_path / "quick")
    assert c.first_divergence == "blocks.1.mlp.gelu" and kinds_at(c) == {"blocks.1.mlp.gelu": "activation_approx"}


def test_an_op_the_port_does_not_compute_is_named_missing(hf_port, tiny_en, default_trace, tmp_path):
    port = fresh(hf_port, tiny_en)

    def forward(self, input_features, **kwargs):  # conv2 without its GELU
        x = torch.nn.functional.gelu(self.conv1(input_features))
        x = self.conv2(x).permute(0, 2, 1) + self.embed_positions.weight
        for layer in self.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return (self.layer_norm(x),)

    port.forward = types.MethodType(forward, port)
    amap, c = capture_and_compare(port, tiny_en, default_trace, tmp_path / "no-gelu")
    assert any("conv2.gelu: no value of the port computes it" in n for n in amap.notes)
    assert c.first_divergence == "conv2.gelu" and kinds_at(c) == {"conv2.gelu": "wrong_activation"}
    assert not [f for f in c.findings if f.op != "conv2.gelu" and f.severity == "error"]


def test_what_cannot_be_captured_is_an_error_never_an_empty_capture(hf_port, tiny_en, tmp_path):
    with pytest.raises(wd.WhisperdiffError, match="recorded no value"), wd.mark_all(hf_port):
        pass  # the port never ran
    with pytest.raises(wd.WhisperdiffError, match="a torch module is captured as it runs"):
        wd.instrument(hf_port)

    class Opaque:  # a port class that compiles and runs its own graph: nothing to inspect before it runs
        pass

    report = wd.preflight(Opaque, tiny_en)
    assert [f.kind for f in report.findings] == ["scope"] and "mark_all" in report.lines()[0]

    def broken():
        raise ValueError("no config")

    (line,) = wd.preflight(broken, tiny_en).lines()
    assert line.startswith("build: constructing it raised ValueError at broken (test_port_capture.py:")
    with pytest.warns(wd.WhisperdiffWarning, match="holds 1 of the model's 54 canonical ops"):
        with wd.Tracer(tmp_path / "one", impl="x", model=tiny_en) as t:
            t.record("conv1", np.zeros((1, tiny_en.dims.n_audio_state, 3000), np.float32))


def test_preflight_of_a_torch_port_names_a_wrong_input_width_in_one_line(tiny_en):
    config = hf_config(tiny_en.dims)
    config.num_mel_bins = 40
    lines = wd.preflight(lambda: WhisperEncoder(config), tiny_en).lines()
    build = next(line for line in lines if line.startswith("build:"))
    assert "a forward on Whisper's input [1, 80, 3000] raised RuntimeError" in build and "40" in build


@pytest.mark.slow
def test_a_max_port_whose_graph_scales_its_output_fails_check(small_random, tmp_path):
    """The MAX side of the same rule (compiles one small graph): the value automap aligns as ln_post agrees,
    the graph returns it times 0.5, and compare, check and the map all use what the graph returns."""
    from max import engine
    from max.driver import CPU
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType, ops

    sys.path.insert(0, str(EXAMPLES))
    try:
        import max_nn_encoder as ex
    finally:
        sys.path.remove(str(EXAMPLES))
    d = small_random.dims
    reference = wd.trace("torch", model=small_random, out=tmp_path / "torch")
    enc = ex.Encoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer, DeviceRef.CPU())
    enc.load_state_dict(ex.whisper_weights(small_random.state_dict))
    mel = TensorType(DType.float32, [1, d.n_mels, 2 * d.n_audio_ctx], device=DeviceRef.CPU())
    with Graph("scaled_output", input_types=[mel]) as graph, wd.mark_all(enc, select="canonical", dims=d) as cap:
        graph.output(ops.mul(enc(graph.inputs[0].tensor), ops.constant(0.5, DType.float32, DeviceRef.CPU())))
    compiled = engine.InferenceSession(devices=[CPU()]).load(graph, weights_registry=enc.state_dict())
    amap = trace_captured(
        tmp_path / "port",
        cap,
        # like a port class that runs its own compiled model and returns its output only: the chosen values
        # are read from that execution, the output from what the port returns
        lambda m: compiled.execute(np.ascontiguousarray(m, np.float32))[0].to_numpy(),
        model=small_random,
        impl="max.nn port, scaled output",
        reference=reference,
        map_path=tmp_path / "port.map.toml",
    )
    output = wd.load_trace(tmp_path / "port").manifest["runner"]["capture"]["output"]
    assert output["aligned_key"] == "ln_post" and output["key"] != "ln_post" and output["after"][0]["op"] == "mul"
    assert amap.unmatched == [] and amap.by_name["ln_post"].basis == "output"
    c = wd.compare(reference, tmp_path / "port")
    assert c.first_divergence == "ln_post" and kinds_at(c) == {"ln_post": "scale_mismatch"}
    result = wd.check(reference, tmp_path / "port", wd.load_tolerances("float32"))
    assert not result.passed


def test_a_saved_map_used_on_another_graph_says_which_entries_no_longer_fit(hf_port, tiny_en, default_trace, tmp_path):
    from whisperdiff.mapping.maps import read_map

    cap = wd.mark_all(hf_port, dims=tiny_en.dims)
    run = lambda mel: hf_port(torch.from_numpy(mel))  # noqa: E731
    trace_captured(
        tmp_path / "clean", cap, run, model=tiny_en, impl="hf", reference=default_trace, map_path=tmp_path / "m.toml"
    )
    saved = read_map(tmp_path / "m.toml")
    assert saved["graph"]["values"] == len(cap.values) and len(saved["graph"]["fingerprint"]) == 16
    port = fresh(hf_port, tiny_en)
    port.layer_norm = torch.nn.Identity()  # another graph: the final layer norm is gone
    amap = trace_captured(
        tmp_path / "edited",
        wd.mark_all(port, dims=tiny_en.dims),
        lambda mel: port(torch.from_numpy(mel)),
        model=tiny_en,
        impl="hf",
        reference=default_trace,
        saved=saved,
    )
    assert amap.notes[0].startswith("map: made from another graph") and "1 do not fit" in amap.notes[0]
    assert "map: ln_post = 'layer_norm' names no value of this capture; aligned without the map" in amap.notes
    assert sum(m.basis == "map" for m in amap.matches) == len(amap.matches) - 1  # every other entry still fits
    c = wd.compare(default_trace, tmp_path / "edited")
    assert any(w.startswith("alignment: map: made from another graph") for w in c.warnings)


def test_patching_a_captured_torch_port_finds_the_op_that_causes_its_error(hf_port, tiny_en, default_trace, tmp_path):
    """Activation patching for a port whisperdiff did not write: the captured forward re-run with one
    aligned value replaced by the reference's; the earliest op whose patch restores the output is the cause."""
    from whisperdiff.capture.torch_capture import CapturedTorchRunner

    port = head_zeroed(hf_port, tiny_en)
    cap = wd.mark_all(port, dims=tiny_en.dims)
    run = lambda mel: port(torch.from_numpy(mel))  # noqa: E731
    amap = trace_captured(tmp_path / "head", cap, run, model=tiny_en, impl="hf", reference=default_trace)
    p = wd.patch(default_trace, tmp_path / "head", runner=CapturedTorchRunner(cap, run, amap), transcribe=False)
    assert p.unpatched_rel_l2 > 0.01 and p.cause == "blocks.1.attn.wv", [(r.op, r.restored) for r in p.results]
    assert p.result("blocks.1.attn.v").restored < 0.5 and p.result("blocks.1.out").restored > 0.99
