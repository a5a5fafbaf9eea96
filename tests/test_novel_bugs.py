"""Issue 15: the novel-bug set (benchmarks/novel_bugs.py, an independent encoder with planted bugs that
`whisperdiff faults` does not have) and whisperdiff's diagnosis on it (benchmarks/diagnosis.py).

One module fixture traces the torch reference, the independent encoder clean (float32, float64) and
with every bug on a small random model, and compares each with the reference for real."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import whisperdiff as wd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import diagnosis  # noqa: E402
import novel_bugs as nb  # noqa: E402

# The issue-15 taxonomy of finding kinds (kinds a planted bug may expect).
KINDS = {
    "input_mismatch",
    "weights_mismatch",
    "weight_layout",
    "wrong_weight",
    "swapped_projections",
    "bias_error",
    "activation_approx",
    "wrong_activation",
    "layer_norm_eps",
    "layer_norm_variance",
    "layer_norm_affine",
    "rms_norm",
    "norm_axis",
    "softmax_axis",
    "attention_mask",
    "attention_scale",
    "head_split",
    "conv_padding",
    "conv_stride",
    "conv_kernel",
    "positional",
    "precision",
    "missing_op",
    "missing_residual",
    "scale_mismatch",
    "bias_shift",
    "sign_flip",
    "nonfinite",
    "divergence",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, small_random):
    return diagnosis.run(small_random, workdir=tmp_path_factory.mktemp("novel"), jobs=2)


def test_the_set_is_novel_and_covers_every_op_type():
    from whisperdiff.capture.faults import DECODER_FAULTS, FAULTS

    assert len(nb.BUGS) >= 30
    assert len(nb.BUGS_BY_NAME) == len(nb.BUGS)
    assert not set(nb.BUGS_BY_NAME) & (set(FAULTS) | set(DECODER_FAULTS))
    names = set(wd.op_names(wd.load_model("random:tiny").dims))  # 4 blocks, as tiny.en
    for bug in nb.BUGS:
        assert bug.kind in KINDS - {"divergence"}, bug
        assert bug.expected_op(4) in names, bug
        assert (bug.dtype is not None) == (bug.kind == "precision"), bug
    ops = {op.split(".", 2)[2] if op.startswith("blocks.") else op for op in (b.expected_op(4) for b in nb.BUGS)}
    for op in (
        "mel",
        "conv1",
        "conv2",
        "conv1.gelu",
        "conv2.gelu",
        "pos_embed",
        "attn_ln",
        "mlp_ln",
        "ln_post",
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.weights",
        "attn.wv",
        "attn.out",
        "mlp.fc1",
        "mlp.gelu",
        "mlp.fc2",
        "attn_residual",
    ):
        assert op in ops, op
    assert {b.dtype for b in nb.BUGS if b.dtype} == {"float16", "bfloat16", "tf32"}
    assert len({b.block for b in nb.BUGS}) == 4  # not always block 0


def test_own_frontend_is_whispers_bit_for_bit(small_random):
    from whisperdiff.inputs.audio import prepare_input

    mine = nb.log_mel(nb.default_samples(), small_random.dims.n_mels)
    assert np.array_equal(mine, prepare_input(small_random.dims.n_mels).mel)


def test_scoring_rules():
    from whisperdiff.analysis.compare import Finding

    bf16 = nb.BUGS_BY_NAME["mlp-bfloat16"]
    op = bf16.expected_op(4)
    assert diagnosis.score(bf16, op, Finding("precision", op, 0.9, "rounded to bfloat16"))["verdict"] == "correct"
    wrong = diagnosis.score(bf16, op, Finding("precision", op, 0.9, "float16 rounding"))
    assert wrong["verdict"] == "misleading" and not wrong["kind_ok"]
    assert diagnosis.score(bf16, op, Finding("divergence", op, 0.5, "no hypothesis"))["verdict"] == "op-only"
    assert diagnosis.score(bf16, op, Finding("divergence", "ln_post", 0.5, ""))["verdict"] == "missed"
    assert diagnosis.score(bf16, op, None)["verdict"] == "missed"
    assert diagnosis.score(bf16, op, Finding("sign_flip", op, 0.9, ""))["verdict"] == "misleading"


@pytest.mark.slow  # the whole novel-bug benchmark (the bench fixture)
def test_every_bug_changes_exactly_its_expected_op_first(bench):
    """(a) the set's own validity: every op before the expected one is bit-identical to the clean run."""
    assert len(bench["bugs"]) == len(nb.BUGS)
    bad = [(r["bug"], r["expected_op"], r["first_changed_op"]) for r in bench["bugs"] if not r["valid"]]
    assert not bad


@pytest.mark.slow
def test_clean_runs_raise_no_error_findings(bench):
    """(b) the independent encoder, clean, in float32 and in float64, against the torch reference."""
    assert bench["clean"]["float32"]["alarms"] == []
    assert bench["clean"]["float64"]["alarms"] == []


def _report(bench) -> str:
    return "\n".join(
        f"{r['bug']}: expected {r['expected_op']} {r['expected_kind']}, got {r['top_op']} "
        f"{r['top_kind']} ({r['verdict']})"
        for r in bench["bugs"]
        if r["verdict"] != "correct"
    )


@pytest.mark.slow
def test_no_misleading_findings(bench):
    """(c) a specific kind that is wrong sends the user to the wrong place: worse than `divergence`."""
    assert bench["figures"]["misleading"] == 0, _report(bench)


@pytest.mark.slow
def test_diagnosis_localises_novel_bugs(bench):
    assert bench["figures"]["op_accuracy"] >= 0.95, _report(bench)


@pytest.mark.slow
def test_diagnosis_names_novel_bugs(bench):
    assert bench["figures"]["kind_accuracy"] >= 0.90, _report(bench)
