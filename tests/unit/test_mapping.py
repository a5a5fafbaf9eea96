"""mapping/align.py and mapping/maps.py: rename rules, layout views, map files."""

import re

import numpy as np
import pytest

from whisperdiff.errors import WhisperdiffError
from whisperdiff.mapping.align import align, compile_rename_rules, layout_view, load_rename_rules, rename
from whisperdiff.mapping.maps import expand, generalise, pattern_regex, read_map, substitute, write_map


def test_rename_rules_carry_stars_over_in_order_and_the_first_match_wins():
    rules = compile_rename_rules(
        {
            "enc.layers.*.q_proj": "blocks.*.attn.q",
            "enc.*.*.out": "blocks.*.attn.*",
            "enc.layers.*.*": "never.*.*",
        }
    )
    assert rename("enc.layers.3.q_proj", rules) == "blocks.3.attn.q"
    assert rename("enc.layers.1.2.q_proj", rules) == "blocks.1.2.attn.q"  # * in a rename rule crosses dots
    assert rename("enc.5.wv.out", rules) == "blocks.5.attn.wv"
    assert rename("decoder.thing", rules) == "decoder.thing"  # no rule: unchanged
    assert rename("anything", []) == "anything"


def test_rename_rules_need_the_same_number_of_stars():
    with pytest.raises(WhisperdiffError, match="same number of \\*"):
        compile_rename_rules({"layers.*.q": "blocks.attn.q"})


def test_load_rename_rules_from_json_and_toml(tmp_path):
    (tmp_path / "r.json").write_text('{"rename": {"l.*.q": "blocks.*.attn.q"}}')
    (tmp_path / "r.toml").write_text('[rename]\n"l.*.k" = "blocks.*.attn.k"\n')
    assert rename("l.0.q", load_rename_rules(tmp_path / "r.json")) == "blocks.0.attn.q"
    assert rename("l.7.k", load_rename_rules(tmp_path / "r.toml")) == "blocks.7.attn.k"
    assert load_rename_rules(None) == []
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(WhisperdiffError, match="not valid json"):
        load_rename_rules(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text('{"rename": {"a": 1}}')
    with pytest.raises(WhisperdiffError, match='expected a table "rename"'):
        load_rename_rules(tmp_path / "list.json")
    with pytest.raises(WhisperdiffError, match="not found"):
        load_rename_rules(tmp_path / "missing.json")


def test_layout_views_put_the_candidate_in_the_references_shape():
    a = np.arange(2 * 6 * 8, dtype=np.float32).reshape(2, 6, 8)  # B, T, C with 2 heads of 4
    same, note = layout_view(a.shape, a.shape)
    assert note is None and same(a) is a
    cases = {
        "transposed (last two axes)": np.swapaxes(a, -1, -2),
        "heads split [B,T,H,D]": a.reshape(2, 6, 2, 4),
        "heads split [B,H,T,D]": np.transpose(a.reshape(2, 6, 2, 4), (0, 2, 1, 3)),
    }
    for what, b in cases.items():
        view, note = layout_view(a.shape, b.shape)
        assert note == f"{list(b.shape)} {what}"
        assert np.array_equal(view(b), a), what
    one = a[:1]
    view, note = layout_view(one.shape, one[0].shape)
    assert note == "[6, 8] without the batch axis" and np.array_equal(view(one[0]), one)
    assert layout_view((1, 6, 8), (1, 6, 9)) is None


def test_align_pairs_by_canonical_name_and_layout():
    a_ops = {"mel": (1, 80, 10), "conv1": (1, 8, 10), "ln_post": (1, 5, 8)}
    b_ops = {"port.conv1": (1, 10, 8), "port.ln_post": (1, 5, 7), "port.extra": (3,)}
    pairs, views = align(a_ops, b_ops, compile_rename_rules({"port.*": "*"}))
    by_name = {p.name: p for p in pairs}
    assert [p.name for p in pairs] == ["mel", "conv1", "ln_post", "extra"]
    assert by_name["mel"].b_shape is None and not by_name["mel"].matched
    conv1 = by_name["conv1"]
    assert conv1.matched and conv1.b_name == "port.conv1" and conv1.layout == "[1, 10, 8] transposed (last two axes)"
    assert views["conv1"](np.zeros((1, 10, 8))).shape == (1, 8, 10)
    assert not by_name["ln_post"].matched
    assert by_name["ln_post"].problem == "shapes [1, 5, 8] and [1, 5, 7] match under no known layout"
    assert by_name["extra"].a_shape is None and by_name["extra"].b_name == "port.extra"
    assert set(views) == {"conv1"}


def test_map_patterns_match_one_segment_per_star():
    rx = pattern_regex("layers.*.attention.wq")
    assert rx.match("layers.3.attention.wq").groups() == ("3",)
    assert rx.match("layers.3.4.attention.wq") is None
    assert substitute("blocks.*.attn.*", ("2", "q")) == "blocks.2.attn.q"
    with pytest.raises(WhisperdiffError, match="number of \\*"):
        substitute("blocks.*.attn", ("1", "2"))


def test_expand_fills_the_right_side_for_concrete_names():
    rules = {
        "blocks.*.attn.q": "layers.*.wq",
        "encoder.conv1.weight": {"name": "conv1.w", "layout": "permuted (2, 1, 0)"},
        "blocks.*.mlp.fc1": {"name": "layers.*.ff.0"},
    }
    names = ["blocks.0.attn.q", "blocks.11.attn.q", "encoder.conv1.weight", "blocks.2.mlp.fc1", "ln_post"]
    assert expand(rules, names) == {
        "blocks.0.attn.q": "layers.0.wq",
        "blocks.11.attn.q": "layers.11.wq",
        "encoder.conv1.weight": {"name": "conv1.w", "layout": "permuted (2, 1, 0)"},
        "blocks.2.mlp.fc1": {"name": "layers.2.ff.0"},
    }


def index_of(name: str):
    m = re.search(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def test_generalise_folds_blocks_into_star_rules_and_keeps_exceptions_exact():
    pairs = {
        "conv1": "stem.conv:0",
        "blocks.0.attn.q": "layers.0.wq",
        "blocks.1.attn.q": "layers.1.wq",
        "blocks.0.attn.k": "layers.0.wk",
        "blocks.1.attn.k": "odd.1.key",  # disagrees with block 0's pattern
    }
    rules = generalise(pairs, index_of)
    assert rules == {
        "conv1": "stem.conv:0",
        "blocks.1.attn.k": "odd.1.key",
        "blocks.*.attn.q": "layers.*.wq",
        "blocks.*.attn.k": "layers.*.wk",
    }
    assert list(rules)[:2] == ["conv1", "blocks.1.attn.k"]  # exact rules first: a pattern would shadow them
    assert expand(rules, pairs) == pairs


def test_write_map_reads_back(tmp_path):
    sections = {
        "ops": {"blocks.*.attn.q": 'layers.*."wq"', "conv1": "c\\1"},
        "weights": {"encoder.conv1.weight": {"name": "conv1.weight", "layout": "permuted (2, 1, 0)", "scale": 0.5}},
    }
    path = write_map(tmp_path / "sub" / "port.map.toml", sections, comments={"ops.conv1": "checked by hand"})
    text = path.read_text()
    assert text.startswith("# whisperdiff map.")
    assert '"conv1" = "c\\\\1"  # checked by hand' in text
    assert read_map(path) == {**sections, "graph": {}}


def test_read_map_errors(tmp_path):
    with pytest.raises(WhisperdiffError, match="not found"):
        read_map(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[ops\n")
    with pytest.raises(WhisperdiffError, match="not valid TOML"):
        read_map(tmp_path / "bad.toml")
    (tmp_path / "flat.toml").write_text('ops = "x"\n')
    with pytest.raises(WhisperdiffError, match="\\[ops\\] must be a table"):
        read_map(tmp_path / "flat.toml")
    (tmp_path / "empty.toml").write_text("")
    assert read_map(tmp_path / "empty.toml") == {"ops": {}, "weights": {}, "graph": {}}


def _branch(*casts: str):
    """A projection, its bias add, then casts to each dtype in turn, read by a residual add with the stream."""
    from whisperdiff.capture.captured import Captured

    shape = (1, 1500, 384)
    made = [
        Captured(0, "stream", "add", shape, "float32", "", ""),
        Captured(1, "fc2", "matmul", shape, "float32", "", ""),
    ]
    made[1].operands, made[1].weight_rank = [0], 2
    bias = Captured(2, "fc2:add#0", "add", shape, "float32", "", "", operands=[1], weight_rank=1)
    made.append(bias)
    for dtype in casts:
        made.append(Captured(len(made), f"cast#{len(made)}", "cast", shape, dtype, "", "", operands=[len(made) - 1]))
    made.append(Captured(len(made), "out", "add", shape, "float32", "", "", operands=[0, len(made) - 1]))
    return {c.index: c for c in made}


def test_a_cast_that_rounds_ends_the_values_taken_as_the_same_numbers():
    """A float16 op written as float32, rounded to float16 and back: the residual add reads the rounded numbers,
    not the float32 value before the cast (which agrees better with a float32 reference, and hid the bug)."""
    from whisperdiff.mapping.dataflow import structural_input

    rounded = _branch("float16", "float32")
    read = structural_input(rounded[max(rounded)], "out", rounded, frozenset({0}))
    assert [c.key for c in read] == ["cast#4", "cast#3"]  # back to float32, the float16 value; not fc2:add#0

    exact = _branch("float32", "float64")  # casts that hold every value: the same numbers, followed through
    read = structural_input(exact[max(exact)], "out", exact, frozenset({0}))
    assert [c.key for c in read] == ["cast#4", "cast#3", "fc2:add#0"]


def test_what_a_projection_reads_is_followed_through_the_rounding_of_its_input():
    """gelu, rounded to float16 and back, then fc2: rounding its input is part of fc2 computed in float16,
    so fc2 reads the gelu's value."""
    from whisperdiff.capture.captured import Captured
    from whisperdiff.mapping.dataflow import structural_input

    shape = (1, 1500, 1536)
    made = [
        Captured(0, "gelu#0", "gelu", shape, "float32", "", ""),
        Captured(1, "cast#0", "cast", shape, "float16", "", "", operands=[0]),
        Captured(2, "cast#1", "cast", shape, "float32", "", "", operands=[1]),
        Captured(3, "matmul#0", "matmul", (1, 1500, 384), "float32", "", "", operands=[2], weight_rank=2),
        Captured(4, "add#0", "add", (1, 1500, 384), "float32", "", "", operands=[3], weight_rank=1),
    ]
    by_index = {c.index: c for c in made}
    assert [c.key for c in structural_input(made[4], "mlp.fc2", by_index)] == ["cast#1", "cast#0", "gelu#0"]


def test_structure_takes_no_op_of_the_next_block_for_an_activation_written_by_hand():
    """A raw-op MLP with its GELU written as x * sigmoid(1.702 x) (no gelu op), then the next block: with no
    value to agree (after a bug), the first gelu after fc1 is the next block's. What fc2 reads is the GELU."""
    from whisperdiff.capture.captured import Captured
    from whisperdiff.inputs.models import preset_dims
    from whisperdiff.mapping.automap import automap

    d = {**preset_dims("tiny"), "n_audio_state": 8, "n_audio_head": 2, "n_audio_layer": 2}
    t, c, h = (1, 1500, 8), (1, 1500, 32), (1, 1500, 8)
    rows = [  # key, op, shape, operands, weight_rank
        ("add#0", "add", t, [], 0),  # block 0's attn_residual: the stream
        ("layer_norm#0", "layer_norm", t, [0], 1),  # mlp_ln
        ("matmul#0", "matmul", c, [1], 2),  # fc1
        ("add#1", "add", c, [2], 1),  # its bias
        ("mul#0", "mul", c, [3], 0),  # 1.702 x
        ("sigmoid#0", "sigmoid", c, [4], 0),
        ("mul#1", "mul", c, [3, 5], 0),  # the GELU
        ("matmul#1", "matmul", t, [6], 2),  # fc2
        ("add#2", "add", t, [7], 1),
        ("add#3", "add", t, [0, 8], 0),  # block 0's out
        ("layer_norm#1", "layer_norm", t, [9], 1),  # block 1: attn_ln, q, an attention, out, residual
        ("matmul#2", "matmul", h, [10], 2),
        ("add#4", "add", h, [11], 1),
        ("softmax#0", "softmax", h, [12], 0),
        ("matmul#3", "matmul", t, [13], 2),
        ("add#5", "add", t, [14], 1),
        ("add#6", "add", t, [9, 15], 0),  # attn_residual
        ("layer_norm#2", "layer_norm", t, [16], 1),  # mlp_ln
        ("matmul#4", "matmul", c, [17], 2),
        ("add#7", "add", c, [18], 1),
        ("gelu#0", "gelu", c, [19], 0),  # block 1's gelu
    ]
    captured = [
        Captured(i, key, op, shape, "float32", "", "", operands=ops, weight_rank=wr, from_weight=wr > 0)
        for i, (key, op, shape, ops, wr) in enumerate(rows)
    ]
    names = ["blocks.0.mlp_ln", "blocks.0.mlp.fc1", "blocks.0.mlp.gelu", "blocks.0.mlp.fc2", "blocks.0.out"]
    amap = automap(captured, dims=d, ops=names)
    assert {m.name: m.key for m in amap.matches} == {
        "blocks.0.mlp_ln": "layer_norm#0",
        "blocks.0.mlp.fc1": "add#1",  # not the product before its bias
        "blocks.0.mlp.gelu": "mul#1",  # what fc2 reads; not gelu#0
        "blocks.0.mlp.fc2": "add#2",
        "blocks.0.out": "add#3",
    }


def test_decoder_ops_read_their_own_inputs_and_steps_are_shaped_for_their_positions():
    """A decoder block's MLP reads the cross-attention residual, its stream starts at the token embedding; a
    cached step computes P = 1 position with keys up to every position so far, and K/V of the encoder output
    only at the first step; the reference is cut to the same positions."""
    from whisperdiff.capture.decoder_capture import reference_slice, step_specs
    from whisperdiff.inputs.models import preset_dims
    from whisperdiff.mapping.dataflow import input_of, split_name

    assert split_name("decoder.blocks.2.cross_attn.q") == ("decoder.blocks.2.", "cross_attn.q")
    assert split_name("decoder.pos_embed") == ("decoder.", "pos_embed") and split_name("conv1") == ("", "conv1")
    assert input_of("decoder.blocks.1.mlp_ln") == "decoder.blocks.1.cross_attn_residual"
    assert input_of("blocks.1.mlp_ln") == "blocks.1.attn_residual"  # the encoder's
    assert input_of("decoder.blocks.0.cross_attn_residual") == "decoder.blocks.0.cross_attn.out"
    assert input_of("decoder.pos_embed") == "decoder.tok_embed" and input_of("pos_embed") == "conv2.gelu"
    assert input_of("decoder.blocks.0.cross_attn.k") is None  # reads the encoder output, no op of the block

    d = preset_dims("tiny")
    first, later = step_specs(d, 0, 3), {s.name: s for s in step_specs(d, 5, 1)}
    assert "decoder.blocks.0.cross_attn.k" in {s.name for s in first}
    assert "decoder.blocks.0.cross_attn.k" not in later and "decoder.logits" not in later
    assert later["decoder.blocks.1.attn.weights"].shape == (1, 6, 1, 6)
    assert later["decoder.blocks.1.mlp.fc1"].shape == (1, 1, 1536)

    n = 8
    weights = np.arange(6 * n * n, dtype=np.float32).reshape(1, 6, n, n)
    ref = {"decoder.blocks.1.attn.weights": weights, "decoder.ln": np.arange(n * 384.0).reshape(1, n, 384)}
    cut = reference_slice(ref, list(later.values()), 5, 1)
    assert np.array_equal(cut["decoder.blocks.1.attn.weights"], weights[:, :, 5:6, :6])
    assert np.array_equal(cut["decoder.ln"], ref["decoder.ln"][:, 5:6])


def test_a_shape_two_layouts_fit_is_viewed_as_the_reference_says_or_heads_first_for_an_attention_product():
    """[1, 6, 6, 64] holds a [1, 6, 384] op heads split either way when there are as many heads as positions:
    the reference picks; with none, an attention product is taken heads first, as sdpa and p @ v make it."""
    from whisperdiff.capture.captured import Captured
    from whisperdiff.mapping.align import layout_views, pick_view

    assert len(layout_views((1, 6, 384), (1, 6, 6, 64))) == 2 and len(layout_views((1, 1, 384), (1, 6, 1, 64))) == 1
    heads_first = np.random.default_rng(0).standard_normal((1, 6, 6, 64)).astype(np.float32)
    ref = heads_first.transpose(0, 2, 1, 3).reshape(1, 6, 384)
    sdpa = Captured(0, "attn:sdpa#0", "scaled_dot_product_attention", (1, 6, 6, 64), "float32", "attn", "")
    view, layout = pick_view((1, 6, 384), sdpa)
    assert "[B,H,T,D]" in layout and np.array_equal(view(heads_first), ref)
    reshaped = Captured(1, "attn:reshape#0", "reshape", (1, 6, 6, 64), "float32", "attn", "")
    assert "[B,T,H,D]" in pick_view((1, 6, 384), reshaped)[1]
    view, layout = pick_view((1, 6, 384), reshaped, ref, {"attn:reshape#0": heads_first})  # the reference says
    assert "[B,H,T,D]" in layout and np.array_equal(view(heads_first), ref)


def test_a_dropped_residual_is_missing_not_the_next_add():
    """The MLP reads the attention's output directly (no residual add). The next add without a weight, the
    MLP's output added to that branch, is not the residual: its other operand came after the branch."""
    from whisperdiff.capture.captured import Captured
    from whisperdiff.inputs.models import preset_dims
    from whisperdiff.mapping.automap import automap

    d = {**preset_dims("tiny"), "n_audio_state": 8, "n_audio_head": 2, "n_audio_layer": 2}
    t, c = (1, 1500, 8), (1, 1500, 32)
    rows = [  # key, op, shape, operands, weight_rank
        ("x#0", "add", t, [], 0),  # the stream
        ("matmul#0", "matmul", t, [0], 2),  # the out projection
        ("add#1", "add", t, [1], 1),  # its bias: attn.out
        ("layer_norm#0", "layer_norm", t, [2], 1),  # mlp_ln, of attn.out itself
        ("matmul#1", "matmul", c, [3], 2),
        ("add#2", "add", c, [4], 1),  # fc1
        ("gelu#0", "gelu", c, [5], 0),
        ("matmul#2", "matmul", t, [6], 2),
        ("add#3", "add", t, [7], 1),  # fc2
        ("add#4", "add", t, [2, 8], 0),  # out: the branch plus fc2
    ]
    captured = [
        Captured(i, key, op, shape, "float32", "", "", operands=ops, weight_rank=wr, from_weight=wr > 0)
        for i, (key, op, shape, ops, wr) in enumerate(rows)
    ]
    names = ["blocks.0.attn.out", "blocks.0.attn_residual", "blocks.0.mlp_ln", "blocks.0.mlp.fc1"]
    names += ["blocks.0.mlp.gelu", "blocks.0.mlp.fc2", "blocks.0.out"]
    amap = automap(captured, dims=d, ops=names)
    got = {m.name: m.key for m in amap.matches}
    assert got["blocks.0.out"] == "add#4" and got["blocks.0.mlp_ln"] == "layer_norm#0"
    assert got["blocks.0.attn_residual"] == "add#1" and amap.by_name["blocks.0.attn_residual"].basis == "dataflow"
    assert any("attn_residual" in n and "the op is missing" in n for n in amap.notes)


def test_a_block_reads_the_previous_blocks_output():
    """A block's first op reads the stream (the previous block's output, the embedding for block 0): where a
    port drops the MLP's residual, the next block's layer norm reads fc2 and that is said as missing."""
    from whisperdiff.mapping.dataflow import stream_input_of

    assert stream_input_of("decoder.blocks.3.attn_ln") == "decoder.blocks.2.out"
    assert stream_input_of("decoder.blocks.0.attn_ln") == "decoder.pos_embed"
    assert stream_input_of("blocks.0.attn_ln") == "pos_embed" and stream_input_of("blocks.5.attn_ln") == "blocks.4.out"
    assert stream_input_of("blocks.1.mlp_ln") is None and stream_input_of("ln_post") is None

    from whisperdiff.capture.captured import Captured
    from whisperdiff.inputs.models import preset_dims
    from whisperdiff.mapping.automap import automap

    d = {**preset_dims("tiny"), "n_audio_state": 8, "n_audio_head": 2, "n_audio_layer": 2}
    t, c = (1, 1500, 8), (1, 1500, 32)
    rows = [  # key, op, shape, operands, weight_rank
        ("x#0", "add", t, [], 0),  # block 0's stream after its attention
        ("layer_norm#0", "layer_norm", t, [0], 1),  # mlp_ln
        ("matmul#0", "matmul", c, [1], 2),
        ("add#0", "add", c, [2], 1),  # fc1
        ("gelu#0", "gelu", c, [3], 0),
        ("matmul#1", "matmul", t, [4], 2),
        ("add#1", "add", t, [5], 1),  # fc2, and no residual add after it
        ("layer_norm#1", "layer_norm", t, [6], 1),  # block 1's attn_ln reads fc2
        ("matmul#2", "matmul", t, [7], 2),
        ("add#2", "add", t, [8], 1),  # block 1's q
    ]
    captured = [
        Captured(i, key, op, shape, "float32", "", "", operands=ops, weight_rank=wr, from_weight=wr > 0)
        for i, (key, op, shape, ops, wr) in enumerate(rows)
    ]
    names = ["blocks.0.mlp_ln", "blocks.0.mlp.fc1", "blocks.0.mlp.gelu", "blocks.0.mlp.fc2", "blocks.0.out"]
    amap = automap(captured, dims=d, ops=[*names, "blocks.1.attn_ln", "blocks.1.attn.q"])
    out = amap.by_name["blocks.0.out"]
    assert out.key == "add#1" and out.basis == "dataflow" and amap.by_name["blocks.1.attn_ln"].key == "layer_norm#1"
    assert any(n.startswith("blocks.0.out: no value of the port computes it") for n in amap.notes), amap.notes
