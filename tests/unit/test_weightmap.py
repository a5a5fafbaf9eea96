"""mapping/weightmap.py by shape and name alone (a port that holds no values yet), at a real model's depth."""

from __future__ import annotations

import numpy as np

from whisperdiff.mapping.weightmap import propose

C, MELS, CTX, LAYERS = 8, 4, 6, 4  # four blocks: block indices 0 and 2 are also Sequential indices (mlp.0, mlp.2)

BLOCK = {  # openai-whisper's names inside one block -> (shape, the name MAX's pipelines encoder gives it)
    "attn.query.weight": ((C, C), "attention.wq.weight"),
    "attn.query.bias": ((C,), "attention.wq.bias"),
    "attn.key.weight": ((C, C), "attention.wk.weight"),
    "attn.value.weight": ((C, C), "attention.wv.weight"),
    "attn.value.bias": ((C,), "attention.wv.bias"),
    "attn.out.weight": ((C, C), "attention.wo.weight"),
    "attn.out.bias": ((C,), "attention.wo.bias"),
    "attn_ln.weight": ((C,), "attention_norm.weight"),
    "attn_ln.bias": ((C,), "attention_norm.bias"),
    "mlp.0.weight": ((4 * C, C), "mlp.fc1.weight"),
    "mlp.0.bias": ((4 * C,), "mlp.fc1.bias"),
    "mlp.2.weight": ((C, 4 * C), "mlp.fc2.weight"),
    "mlp.2.bias": ((C,), "mlp.fc2.bias"),
    "mlp_ln.weight": ((C,), "mlp_norm.weight"),
    "mlp_ln.bias": ((C,), "mlp_norm.bias"),
}
OUTSIDE = {
    "conv1.weight": ((C, MELS, 3), "conv1.weight"),
    "conv1.bias": ((C,), "conv1.bias"),
    "conv2.weight": ((C, C, 3), "conv2.weight"),
    "conv2.bias": ((C,), "conv2.bias"),
    "positional_embedding": ((CTX, C), "embed_positions.weight"),
    "ln_post.weight": ((C,), "norm.weight"),
    "ln_post.bias": ((C,), "norm.bias"),
}


def test_a_block_index_is_not_read_as_a_role_when_only_names_and_shapes_are_known():
    """`layers.2.mlp_norm.bias` is block 2's MLP layer norm, not mlp.2 (whose Sequential index is also "2"):
    every tensor of every block goes to its own, as MAX's pipelines encoder names them."""
    expected = {f"encoder.{k}": port for k, (_, port) in OUTSIDE.items()}
    reference = {f"encoder.{k}": np.zeros(shape, np.float32) for k, (shape, _) in OUTSIDE.items()}
    for i in range(LAYERS):
        for k, (shape, port) in BLOCK.items():
            expected[f"encoder.blocks.{i}.{k}"] = f"layers.{i}.{port}"
            reference[f"encoder.blocks.{i}.{k}"] = np.zeros(shape, np.float32)
    # in the module's own order: each block's two norms before its projections, as MAX's encoder declares them
    norms_first = sorted(expected.items(), key=lambda kv: (kv[0].split(".")[2:3], "norm" not in kv[1]))
    declared = {port: tuple(reference[ref].shape) for ref, port in norms_first}
    declared["conv1.weight"], declared["conv2.weight"] = (3, MELS, C), (3, C, C)  # [k, in, out]
    m = propose(declared, reference)
    assert not m.unmatched_reference and not m.unmatched_port
    wrong = {x.reference: x.port for x in m.matches if x.port != expected[x.reference]}
    assert wrong == {}, wrong
