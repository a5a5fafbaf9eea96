"""measure/tolerances.py: the TOML format, per-op rules, failures and proposed tolerances."""

import math

import pytest

from whisperdiff.errors import WhisperdiffError
from whisperdiff.measure.tolerances import (
    OpFailure,
    Tolerance,
    ToleranceSet,
    load_tolerances,
    parse_tolerances,
    propose,
)

TEXT = """\
[default]
min_cosine = 0.999
max_rel_l2 = 1e-3

[ops."blocks.*"]
max_rel_l2 = 1e-2

[ops."blocks.*.attn.weights"]
max_abs = 0.5
max_rel_l2 = 0.2
"""
FINITE = {"nan_a": 0, "inf_a": 0, "nan_b": 0, "inf_b": 0}  # every compare row counts non-finite elements


def test_parse_reads_the_default_and_rules_in_file_order():
    ts = parse_tolerances(TEXT, "t.toml")
    assert ts.source == "t.toml"
    assert ts.default == Tolerance(min_cosine=0.999, max_rel_l2=1e-3)
    assert ts.rules == [
        ("blocks.*", {"max_rel_l2": 1e-2}),
        ("blocks.*.attn.weights", {"max_abs": 0.5, "max_rel_l2": 0.2}),
    ]
    assert ts.for_op("conv1") == ts.default
    assert ts.for_op("blocks.3.mlp.fc1").max_rel_l2 == 1e-2
    w = ts.for_op("blocks.3.attn.weights")  # both rules match; the later one wins
    assert (w.max_rel_l2, w.max_abs, w.min_cosine) == (0.2, 0.5, 0.999)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[default]\nmin_cosine = 0.9\nmax_rell2 = 1\n", ("line 3", "unknown key 'max_rell2'")),
        ('[default]\n\n[ops."x"]\nmax_abs = -1\n', ("line 4", "max_abs = -1", "finite number >= 0")),
        ("[default]\nmin_cosine = 1.5\n", ("line 2", "between 0 and 1")),
        ("[defaults]\nmin_cosine = 0.9\n", ("line 1", "unknown section 'defaults'")),
        ("[default\n", ("malformed TOML",)),
        ("[default]\nmax_abs = true\n", ("line 2", "max_abs = True")),
    ],
)
def test_parse_errors_name_the_line(text, fragments):
    with pytest.raises(WhisperdiffError) as e:
        parse_tolerances(text, "bad.toml")
    assert str(e.value).startswith("bad.toml:")
    for fragment in fragments:
        assert fragment in str(e.value)


def test_a_limit_out_of_range_is_refused():
    with pytest.raises(WhisperdiffError, match="finite number"):
        Tolerance(max_rel_l2=math.nan)
    with pytest.raises(WhisperdiffError, match="between 0 and 1"):
        Tolerance(max_mismatch=2.0)


def test_failures_name_each_limit_broken():
    tol = Tolerance(min_cosine=0.99, max_rel_l2=1e-3, max_abs=0.1, max_std_ratio_dev=0.05)
    row = {"op": "conv1", "cosine": 0.98, "rel_l2": 2e-3, "max_abs": 0.05, "std_ratio": 1.2, **FINITE}
    found = tol.failures(row)
    assert [(f.op, f.metric, f.limit) for f in found] == [
        ("conv1", "cosine", ">= 0.99"),
        ("conv1", "rel_l2", "<= 0.001"),
        ("conv1", "std_ratio_dev", "<= 0.05"),
    ]
    assert found[2].value == pytest.approx(0.2)
    assert str(found[1]) == "conv1: rel_l2 0.002 (limit <= 0.001)"
    assert found[1].text == "rel_l2 0.002 (limit <= 0.001)"
    assert tol.diverged(row)
    assert tol.failures({**row, "cosine": 0.995, "rel_l2": 1e-4, "std_ratio": 1.01}) == []


def test_failures_for_nonfinite_values_and_missing_numbers():
    tol = Tolerance()
    row = {"name": "ln_post", "cosine": 1.0, "rel_l2": 0.0, "nan_a": 0, "inf_a": 0, "nan_b": 2, "inf_b": 1}
    assert [(f.metric, f.value, f.limit) for f in tol.failures(row)] == [("nonfinite", 3.0, "<= 0 NaN/Inf")]
    ref_bad = tol.failures({**row, "nan_a": 1, "nan_b": 0, "inf_b": 0})
    assert [f.metric for f in ref_bad] == ["nonfinite_reference"]
    no_number = tol.failures({"cosine": math.nan, "rel_l2": math.nan, **FINITE}, op="x")
    assert [(f.op, f.metric) for f in no_number] == [("x", "cosine"), ("x", "rel_l2")]


def test_op_failure_json_and_text_without_a_value():
    f = OpFailure("blocks.0.out", "missing", math.nan, "present in B")
    assert f.to_json() == {"op": "blocks.0.out", "metric": "missing", "value": None, "limit": "present in B"}
    assert f.text == "missing in B"
    assert str(f) == "blocks.0.out: missing (limit present in B)"


def test_propose_folds_blocks_and_scales_the_spread():
    rows = [
        {"op": "conv1", "rel_l2": 1e-9, "cosine": 1.0, "max_abs": 0.0},
        {"op": "blocks.0.attn.q", "rel_l2": 1e-7, "cosine": 1 - 1e-8, "max_abs": 1e-5},
        {"op": "blocks.1.attn.q", "rel_l2": 3.14e-7, "cosine": 1 - 2e-8, "max_abs": 2e-5},
        {"op": "blocks.1.attn.k", "rel_l2": math.nan, "cosine": math.nan, "max_abs": math.nan},
    ]
    ts = propose(rows, factor=10)
    rules = dict(ts.rules)
    assert set(rules) == {"conv1", "blocks.*.attn.q"}
    assert rules["conv1"]["max_rel_l2"] == pytest.approx(1e-6)  # the floor
    assert "max_abs" not in rules["conv1"]  # no spread measured, no limit
    q = rules["blocks.*.attn.q"]
    assert q["max_rel_l2"] == pytest.approx(3.2e-6)  # 3.14e-6 rounded up to two digits
    assert q["min_cosine"] == pytest.approx(1 - 2e-7)
    assert q["max_abs"] == pytest.approx(2e-4)
    assert ts.default.max_rel_l2 == pytest.approx(3.2e-6)  # the loosest rule
    assert ts.default.min_cosine == pytest.approx(1 - 2e-7)


def test_proposed_limits_read_back_exactly_from_their_file():
    """A limit is the float its decimal text parses to: 26 * 1e-7 would be 2.5999999999999997e-06, and a
    proposed file read back would then hold other limits than the set it was written from."""
    rows = [
        {"op": f"blocks.{i}.out", "rel_l2": x, "cosine": 1.0, "max_abs": x} for i, x in enumerate((2.55e-7, 9.99e-6))
    ]
    ts = propose(rows, factor=10)
    assert dict(ts.rules)["blocks.*.out"]["max_rel_l2"] == 1e-4  # 9.99e-5 rounded up: exactly the literal
    one = propose(rows[:1], factor=10)
    assert dict(one.rules)["blocks.*.out"]["max_rel_l2"] == 2.6e-6
    assert parse_tolerances(one.to_toml("t"), "t.toml").rules == one.rules


def test_propose_refuses_a_factor_below_one_and_no_rows():
    with pytest.raises(WhisperdiffError, match="--factor 0.5"):
        propose([{"op": "x", "rel_l2": 0.1, "cosine": 1.0, "max_abs": 0.0}], factor=0.5)
    with pytest.raises(WhisperdiffError, match="no op is in both traces"):
        propose([])


def test_to_toml_reads_back_as_the_same_set():
    ts = parse_tolerances(TEXT, "t.toml")
    text = ts.to_toml("made by a test\n\nsecond line")
    assert text.startswith("# made by a test\n#\n# second line\n")
    again = parse_tolerances(text, "again")
    assert (again.default, again.rules) == (ts.default, ts.rules)


def test_shipped_files_and_a_missing_file(tmp_path):
    f32 = load_tolerances("float32")
    assert f32.source == "float32 (shipped)"
    half = load_tolerances("half")
    assert half.default.max_rel_l2 > f32.default.max_rel_l2
    assert load_tolerances(None).default == f32.default
    with pytest.raises(WhisperdiffError, match="does not exist"):
        load_tolerances(tmp_path / "nope.toml")
    path = tmp_path / "mine.toml"
    path.write_text("[default]\nmax_abs = 0.25\n")
    assert load_tolerances(path).default.max_abs == 0.25


def test_tolerance_set_of_a_single_tolerance():
    assert ToleranceSet.of(None).source == "built-in defaults"
    one = ToleranceSet.of(Tolerance(max_abs=1.0))
    assert one.source == "command-line limits"
    assert one.for_op("anything").max_abs == 1.0
