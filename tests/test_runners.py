"""One runner family: every built-in runner conforms to its declared Protocol, the registry picks them by
--impl name, and the torch runners' hook tables are derived from names.py."""

import numpy as np
import pytest

from whisperdiff.capture import make_decoder_runner, make_runner
from whisperdiff.capture.faults import get_faults
from whisperdiff.capture.plugin import PluginRunner
from whisperdiff.capture.runner import PROTOCOLS, RUNNERS, DecoderRunner, Runner, missing_members, runner_class
from whisperdiff.capture.torch_hooks import IN, OUT, hook_table
from whisperdiff.errors import WhisperdiffError
from whisperdiff.names import BLOCK_OPS, DECODER_BLOCK_OPS, DECODER_INPUT, decoder_op_specs, op_names


@pytest.mark.parametrize("kind, impl", [(k, i) for k in RUNNERS for i in RUNNERS[k]])
def test_each_built_in_runner_class_satisfies_its_protocol(kind, impl):
    cls = runner_class(kind, impl)
    assert cls.impl == impl
    assert missing_members(cls, PROTOCOLS[kind]) == []


def test_the_plugin_runner_satisfies_the_encoder_protocol():
    assert missing_members(PluginRunner, Runner) == []


def test_a_class_missing_a_member_is_named():
    class Half:
        impl = "half"

        def start(self, features): ...

    assert set(missing_members(Half, DecoderRunner)) == {"takes_faults", "facts()", "step()", "close()"}


def test_the_torch_runners_run_as_their_protocols_say(small_random):
    mel = np.zeros((1, small_random.dims.n_mels, 2 * small_random.dims.n_audio_ctx), np.float32)
    encoder = make_runner("torch", small_random, device="cpu")
    assert isinstance(encoder, Runner)
    seen = []
    encoder.run(mel, lambda name, value: seen.append(name))
    assert seen == [n for n in op_names(small_random.dims) if n != "mel"]

    decoder = make_decoder_runner("torch", small_random)
    assert isinstance(decoder, DecoderRunner)
    features = np.zeros((1, small_random.dims.n_audio_ctx, small_random.dims.n_audio_state), np.float32)
    decoder.start(features)
    steps = []
    logits = decoder.step(np.array([[1, 2]]), lambda name, value: steps.append(name))
    decoder.close()
    assert logits.shape == (1, 2, small_random.dims.n_vocab)
    assert steps == [s.name for s in decoder_op_specs(small_random.dims, 2) if s.name != DECODER_INPUT]


def test_the_registry_names_what_it_cannot_build(small_random):
    with pytest.raises(WhisperdiffError, match="unknown decoder implementation 'jax'"):
        make_decoder_runner("jax", small_random)
    with pytest.raises(WhisperdiffError, match="use --impl max"):
        make_decoder_runner("torch", small_random, faults=get_faults(["pos-restart"], part="decoder"))
    with pytest.raises(WhisperdiffError, match="acts inside the MAX encoder"):
        make_runner("torch", small_random, faults=get_faults(["gelu-tanh"]))


def test_the_hook_tables_follow_the_canonical_ops(small_random):
    dims = small_random.dims
    encoder = hook_table([n for n in op_names(dims) if n != "mel"], BLOCK_OPS)
    assert [h.op for h in encoder] == [n for n in op_names(dims) if n != "mel"]
    where = {h.op: (h.module, h.side) for h in encoder}
    assert where["conv1.gelu"] == ("conv2", IN)
    assert where["pos_embed"] == ("blocks.0", IN)
    assert where["blocks.1.attn.k"] == ("blocks.1.attn.key", OUT)
    assert where["blocks.1.attn_residual"] == ("blocks.1.mlp_ln", IN)  # the input of the next layer norm
    assert where["blocks.1.out"] == ("blocks.1", OUT)

    ops = [s.name for s in decoder_op_specs(dims, 1) if s.name != DECODER_INPUT]
    decoder = {h.op: (h.module, h.side) for h in hook_table(ops, DECODER_BLOCK_OPS, prefix="decoder.")}
    assert decoder["decoder.blocks.0.attn_residual"] == ("blocks.0.cross_attn_ln", IN)
    assert decoder["decoder.blocks.0.cross_attn_residual"] == ("blocks.0.mlp_ln", IN)
    assert decoder["decoder.blocks.0.cross_attn.v"] == ("blocks.0.cross_attn.value", OUT)
    assert decoder["decoder.logits"] == ("", OUT)


def test_with_no_blocks_the_embedding_is_the_final_layer_norms_input():
    table = hook_table(["conv1", "conv1.gelu", "conv2", "conv2.gelu", "pos_embed", "ln_post"], BLOCK_OPS)
    assert table[4].module == "ln_post" and table[4].side == IN
