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
