"""`check` for CI: tolerance files, proposed tolerances, JUnit XML, golden sets and the pytest helper,
on real MAX and torch runs of small random dims (every injected bug) and of the embedded tiny.en."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
from conftest import SMALL_RANDOM, assert_one_line_error, run_cli

import whisperdiff as wd
from whisperdiff.capture.faults import FAULTS
from whisperdiff.gate.check import check, check_golden, junit_xml
from whisperdiff.gate.golden import load_golden, save_golden
from whisperdiff.gate.testing import assert_traces_close
from whisperdiff.measure.tolerances import Tolerance, load_tolerances, parse_tolerances, propose


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_random):
    """torch and MAX, all taps, clean and with every injected bug; and a golden set of torch."""
    d = tmp_path_factory.mktemp("check")
    ref = wd.trace("torch", model=small_random, out=d / "torch", taps="all")
    cands = {"clean": wd.trace("max", model=small_random, out=d / "max", taps="all")}
    for name in FAULTS:
        cands[name] = wd.trace("max", model=small_random, out=d / f"max+{name}", taps="all", inject=[name])
    golden = save_golden(ref, d / "golden")
    return ref, cands, golden


# -- tolerance files -------------------------------------------------------------------------------
def test_shipped_tolerance_files_and_glob_rules():
    f32, half = load_tolerances("float32"), load_tolerances("half")
    assert f32.default.max_rel_l2 == 1e-4 and f32.for_op("mel").max_rel_l2 == 1e-5
    assert half.default.min_cosine == 0.999 and half.default.max_rel_l2 > f32.default.max_rel_l2
    tol = parse_tolerances(
        '[default]\nmax_rel_l2 = 1e-4\n[ops."blocks.*.attn.*"]\nmax_rel_l2 = 1e-3\n'
        '[ops."blocks.1.attn.weights"]\nmax_abs = 0.5\nmax_rel_l2 = 2e-3\n',
        "t",
    )
    assert tol.for_op("blocks.0.mlp.fc1").max_rel_l2 == 1e-4
    assert tol.for_op("blocks.0.attn.q").max_rel_l2 == 1e-3
    later_wins = tol.for_op("blocks.1.attn.weights")
    assert (later_wins.max_rel_l2, later_wins.max_abs) == (2e-3, 0.5)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[default]\nmin_cosine = 0.9\nmax_rel_err = 1e-4\n", "line 3: unknown key 'max_rel_err'"),
        ('[default]\nmax_rel_l2 = 1e-4\n\n[ops."ln_post"]\nmax_abs = "big"\n', "line 5: max_abs = 'big'"),
        ("[default]\nmax_rel_l2 = 1e-4\nmin_cosine = = 1\n", "line 3"),
        ("[defaults]\nmax_rel_l2 = 1e-4\n", "line 1: unknown section 'defaults'"),
        ('[default]\nmin_cosine = 0.9\n[[rule]]\nops = "ln_post"\n', "line 3: unknown section 'rule'"),
        ("[default]\nmin_cosine = 1.5\n", "line 2: min_cosine = 1.5 must be between 0 and 1"),
        ("[default]\nmax_rel_l2 = -1\n", "line 2"),
    ],
)
def test_bad_tolerance_files_name_the_line(text, fragment):
    with pytest.raises(wd.WhisperdiffError) as e:
        parse_tolerances(text, "bad.toml")
    assert fragment in str(e.value) and str(e.value).startswith("bad.toml: ")


def test_failures_name_metric_value_and_limit():
    row = {
        "name": "x",
        "cosine": 0.9,
        "rel_l2": 0.5,
        "max_abs": 2.0,
        "mismatch_share": 0.2,
        "std_ratio": 1.3,
        "nan_a": 0,
        "inf_a": 0,
        "nan_b": 0,
        "inf_b": 0,
    }
    tol = Tolerance(min_cosine=0.99, max_rel_l2=0.1, max_abs=1.0, max_mismatch=0.1, max_std_ratio_dev=0.5)
    assert [(f.metric, f.limit) for f in tol.failures(row)] == [
        ("cosine", ">= 0.99"),
        ("rel_l2", "<= 0.1"),
        ("max_abs", "<= 1"),
        ("mismatch_share", "<= 0.1"),
    ]
    assert tol.failures({**row, "nan_b": 3})[0].metric == "nonfinite"
    assert Tolerance(min_cosine=None, max_rel_l2=None).failures(row) == []


def test_propose_folds_blocks_and_rounds_up():
    rows = [
        {"name": "conv1", "rel_l2": 1.01e-6, "cosine": 1 - 2e-12, "max_abs": 3e-5},
        {"name": "blocks.0.mlp.fc1", "rel_l2": 2.04e-6, "cosine": 1 - 1e-11, "max_abs": 1e-4},
        {"name": "blocks.1.mlp.fc1", "rel_l2": 3.14e-6, "cosine": 1 - 5e-11, "max_abs": 2e-4},
        {"name": "blocks.1.attn.weights", "rel_l2": math.nan, "cosine": math.nan, "max_abs": math.nan},
    ]
    proposed = propose(rows, factor=10)
    rules = dict(proposed.rules)
    assert list(rules) == ["conv1", "blocks.*.mlp.fc1"]
    assert rules["blocks.*.mlp.fc1"]["max_rel_l2"] == pytest.approx(3.2e-5)
    assert rules["conv1"]["max_rel_l2"] == pytest.approx(1.1e-5) and rules["conv1"]["max_abs"] == pytest.approx(3e-4)
    assert proposed.default.max_rel_l2 == pytest.approx(3.2e-5)
    again = parse_tolerances(proposed.to_toml("a header"), "round trip")
    assert again.for_op("blocks.7.mlp.fc1") == proposed.for_op("blocks.7.mlp.fc1")


# -- check against a reference trace ---------------------------------------------------------------
@pytest.mark.slow
def test_clean_max_passes_and_every_bug_fails_first_where_it_acts(runs, small_random):
    ref, cands, _ = runs
    tol = load_tolerances("float32")
    assert check(ref, cands["clean"], tol, replay=False).passed
    for name, fault in FAULTS.items():
        result = check(ref, cands[name], tol, replay=False)
        assert not result.passed and result.first_failure == fault.first_op_for(small_random.dims.n_audio_layer), name


@pytest.mark.slow
def test_tf32_tolerances_pass_the_clean_port_and_fail_structural_bugs(runs, small_random):
    """`-t tf32` (a GPU's float32) is looser than float32 by TF32's rounding and truncation: it still fails
    every bug but those whose error is of that size, a float16 block (float16 rounds as TF32 does), a tanh
    GELU (rel L2 1-2e-3 on tiny.en) and a layer-norm epsilon of 1e-3 (a shrink of about 5e-4, where TF32's
    truncation shrinks by up to 2.6e-3): compare, which replays each op on B's own inputs, still names
    those (docs/check.md)."""
    ref, cands, _ = runs
    tol = load_tolerances("tf32")
    assert check(ref, cands["clean"], tol, replay=False).passed
    passed = {name for name in FAULTS if check(ref, cands[name], tol, replay=False).passed}
    assert passed <= {"half-precision-block", "gelu-tanh", "ln-eps"}, passed


@pytest.mark.slow
def test_cli_check_exit_codes_and_junit(runs, tmp_path):
    ref, cands, _ = runs
    proc = run_cli("check", str(ref.path), str(cands["clean"].path), "-t", "float32", "--no-replay")
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr

    junit = tmp_path / "check.xml"
    proc = run_cli("check", str(ref.path), str(cands["missing-ln-post"].path), "--junit", str(junit))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-2].startswith("FAIL: 1 of") and lines[-2].endswith("first failure: ln_post"), proc.stdout
    assert any(line.startswith("✗ ln_post: rel_l2") and "(limit <= 0.0001)" in line for line in lines)
    assert any(line.startswith("likely cause: missing_op at ln_post") for line in lines)

    root = ET.parse(junit).getroot()  # JUnit XML: <testsuites><testsuite><testcase>...
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ref.ops and suite.get("tests") == str(len(ref.ops))
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["ln_post"] and suite.get("failures") == "1"
    assert cases[-1].find("failure").get("type") in ("cosine", "rel_l2")


@pytest.mark.slow
def test_cli_check_bad_input_is_exit_2(runs, tmp_path):
    ref, cands, _ = runs
    bad = tmp_path / "bad.toml"
    bad.write_text("[default]\nmax_rel_l2 = 1e-4\nmin_cos = 0.9\n")
    a, b = str(ref.path), str(cands["clean"].path)
    assert_one_line_error(run_cli("check", a, b, "-t", str(bad)), "line 3", "unknown key 'min_cos'")
    assert_one_line_error(run_cli("check", a, b, "-t", str(tmp_path / "none.toml")), "does not exist")
    assert_one_line_error(run_cli("check", a), "two traces")
    other = wd.trace("torch", model=SMALL_RANDOM + ",seed=3", out=tmp_path / "other-weights")
    proc = run_cli("check", a, str(other.path))
    assert_one_line_error(proc, "not comparable", "different weights")
    assert proc.returncode == 2


# -- golden sets -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_golden_set_catches_every_bug_at_its_op(runs, small_random):
    ref, cands, golden = runs
    g = load_golden(golden)
    assert g.ops == ref.ops and g.manifest["model"]["weights_sha256"] == ref.manifest["model"]["weights_sha256"]
    tol = load_tolerances("float32")
    assert check_golden(golden, cands["clean"], tol).passed
    assert check_golden(golden, ref, tol).passed
    for name, fault in FAULTS.items():
        result = check_golden(golden, cands[name], tol)
        assert result.first_failure == fault.first_op_for(small_random.dims.n_audio_layer), name
    xml = junit_xml(check_golden(golden, cands["variance-rescale"], tol))
    assert ET.fromstring(xml).find("testsuite").get("failures") == "1"


def test_golden_set_for_tiny_fits_in_git_and_checks_from_the_cli(default_trace, tmp_path):
    out = tmp_path / "golden"
    proc = run_cli("golden", "save", str(default_trace.path), "-o", str(out), check=True)
    size = sum(f.stat().st_size for f in out.iterdir())
    assert size < 2 * 2**20 and "wrote" in proc.stdout, size
    assert run_cli("check", str(default_trace.path), "--golden", str(out)).returncode == 0
    assert_one_line_error(run_cli("check", "a", "b", "--golden", str(out)), "one trace")
    assert_one_line_error(run_cli("check", str(default_trace.path), "--golden", str(tmp_path)), "not a golden set")


# -- the pytest helper and proposed tolerances ------------------------------------------------------
@pytest.mark.slow
def test_assert_traces_close(runs):
    ref, cands, golden = runs
    assert_traces_close(ref, cands["clean"])
    with pytest.raises(AssertionError) as e:
        assert_traces_close(ref, cands["kv-swap"], "float32")
    message = str(e.value)
    assert message.startswith("FAIL:") and "first failure: blocks.1.attn.k" in message
    assert "\n  blocks.1.attn.k: " in message
    with pytest.raises(AssertionError, match="first failure: conv1"):
        assert_traces_close(golden, cands["conv-middle-tap"], golden=True)


@pytest.mark.slow
def test_cli_tolerances_from_a_float64_rerun_and_from_another_run(runs, tmp_path):
    ref, cands, _ = runs
    out = tmp_path / "proposed.toml"
    proc = run_cli("tolerances", str(ref.path), "-o", str(out), check=True)
    proposed = load_tolerances(out)
    assert proposed.rules and "float64" in out.read_text() and "wrote" in proc.stderr
    # float32 against float64 spreads by float32 rounding: the proposal is far below the shipped limits
    assert 0 < proposed.default.max_rel_l2 < 1e-4
    assert check(ref, cands["missing-ln-post"], proposed, replay=False).first_failure == "ln_post"
    proc = run_cli("tolerances", str(ref.path), "--from", str(cands["clean"].path), "--factor", "3", check=True)
    assert "[default]" in proc.stdout and "times 3" in proc.stdout
    assert check(ref, cands["clean"], parse_tolerances(proc.stdout, "stdout"), replay=False).passed


@pytest.mark.slow
def test_the_float64_rerun_reads_the_traces_own_mel_not_a_path_its_manifest_names(runs, tmp_path):
    """Reading a trace is inert: `tolerances REF` re-runs on REF's recorded (verified) log-mel, so a manifest
    whose input path is gone, or names something else, changes nothing."""
    import json
    import shutil

    ref, _, _ = runs
    moved = tmp_path / "moved"
    shutil.copytree(ref.path, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["input"]["path"] = str(tmp_path / "gone.wav")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "proposed.toml"
    run_cli("tolerances", str(moved), "-o", str(out), check=True)
    assert 0 < load_tolerances(out).default.max_rel_l2 < 1e-4
