"""measure/metrics.py against values worked out by hand."""

import math

import numpy as np
import pytest

from whisperdiff.measure import metrics
from whisperdiff.measure.metrics import op_metrics, rel_l2, round_to, rounding_error, time_axis
from whisperdiff.measure.tolerances import new_nonfinite


def test_time_axis_reads_the_layout_and_falls_back_to_the_last_axis():
    assert time_axis("B,C,T", 3) == 2
    assert time_axis("B,T,C", 3) == 1
    assert time_axis("B,H,P,P_k", 4) == 2  # P: the decoder's token position
    assert time_axis(None, 3) == 2
    assert time_axis("B,C", 2) == 1
    assert time_axis(None, 0) == 0


def test_op_metrics_of_a_two_element_pair():
    # A = [3, 4], B = [3, -4] along time: B - A = [0, -8]
    m = op_metrics(np.array([[3.0, 4.0]]), np.array([[3.0, -4.0]]), layout="B,T")
    assert m["l2"] == pytest.approx(8.0)
    assert m["rel_l2"] == pytest.approx(8.0 / 5.0)
    assert m["cosine"] == pytest.approx((9 - 16) / 25)
    assert m["max_abs"] == pytest.approx(8.0)
    assert m["max_abs_index"] == [0, 1]
    assert (m["mean_a"], m["mean_b"], m["mean_diff"]) == pytest.approx((3.5, -0.5, -4.0))
    assert (m["std_a"], m["std_b"], m["std_ratio"]) == pytest.approx((0.5, 3.5, 7.0))
    assert m["snr_db"] == pytest.approx(10 * math.log10(25 / 64))
    assert m["mismatch_share"] == pytest.approx(0.5)  # only the second element is outside atol + rtol |A|
    assert m["step_cosine"].tolist() == pytest.approx([1.0, -1.0])
    assert (m["worst_step"], m["worst_step_cosine"]) == (1, pytest.approx(-1.0))
    assert m["step_rel_error"].tolist() == pytest.approx([0.0, 8 / (5 / math.sqrt(2))], rel=1e-6)
    assert (m["nan_a"], m["inf_a"], m["nan_b"], m["inf_b"]) == (0, 0, 0, 0)


def test_op_metrics_of_identical_arrays():
    a = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    m = op_metrics(a, a.copy(), layout="B,C,T")
    assert (m["rel_l2"], m["l2"], m["max_abs"], m["mismatch_share"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["cosine"] == pytest.approx(1.0)
    assert m["snr_db"] == math.inf
    assert m["std_ratio"] == pytest.approx(1.0)


def test_op_metrics_profile_follows_the_layouts_time_axis():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 6, 5)).astype(np.float32)  # B, C, T
    b = a.copy()
    b[..., 3] *= -1  # time step 3 flipped
    m = op_metrics(a, b, layout="B,C,T")
    assert len(m["step_cosine"]) == 5
    assert m["worst_step"] == 3
    assert m["worst_step_cosine"] == pytest.approx(-1.0, abs=1e-6)
    assert m["step_cosine"][[0, 1, 2, 4]].tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert m["max_abs_index"][2] == 3


def test_op_metrics_counts_nonfinite_elements_and_leaves_them_out():
    a = np.array([[1.0, np.nan, 2.0, 2.0]])
    b = np.array([[1.0, 5.0, np.inf, 2.0]])
    m = op_metrics(a, b, layout="B,T")
    assert (m["nan_a"], m["inf_a"], m["nan_b"], m["inf_b"]) == (1, 0, 0, 1)
    assert m["rel_l2"] == 0.0  # what is left (1 and 1, 2 and 2) agrees
    assert not new_nonfinite(m)  # one non-finite element on each side
    m = op_metrics(a, np.array([[np.inf, 5.0, np.inf, 2.0]]), layout="B,T")
    assert m["inf_b"] == 2 and new_nonfinite(m)
    assert m["rel_l2"] == 0.0


def test_op_metrics_is_the_same_in_small_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((1, 7, 9))
    b = a + 0.01 * rng.standard_normal(a.shape)
    whole = op_metrics(a, b, layout="B,T,C")
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 9)  # one time step per chunk
    chunked = op_metrics(a, b, layout="B,T,C")
    for key in ("rel_l2", "cosine", "max_abs", "mean_b", "std_b", "mismatch_share", "worst_step"):
        assert chunked[key] == pytest.approx(whole[key]), key
    assert chunked["max_abs_index"] == whole["max_abs_index"]
    assert chunked["step_cosine"].tolist() == pytest.approx(whole["step_cosine"].tolist())


def test_op_metrics_is_the_same_on_threads_nonfinite_included(monkeypatch):
    """Large ops spread their chunks over threads; the sums, the worst element and the NaN/Inf counts are
    those of one pass, and a chunk with a non-finite value is masked as in one pass."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((1, 40, 6)).astype(np.float32)
    b = a + np.float32(0.01) * rng.standard_normal(a.shape).astype(np.float32)
    b[0, 37, 2] += 5  # the worst element, in the last chunk
    a[0, 3, 1], b[0, 20, 4] = np.nan, np.inf
    one_pass = op_metrics(a, b, layout="B,T,C")
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 12)  # two time steps per chunk, 20 chunks
    monkeypatch.setattr(metrics, "_PARALLEL_ELEMENTS", 1)  # on threads
    threaded = op_metrics(a, b, layout="B,T,C")
    for key in ("rel_l2", "cosine", "max_abs", "mean_a", "mean_b", "std_b", "mismatch_share", "worst_step"):
        assert threaded[key] == pytest.approx(one_pass[key]), key
    assert threaded["max_abs_index"] == one_pass["max_abs_index"] == [0, 37, 2]
    assert (threaded["nan_a"], threaded["inf_b"]) == (one_pass["nan_a"], one_pass["inf_b"]) == (1, 1)
    assert threaded["step_rel_error"].tolist() == pytest.approx(one_pass["step_rel_error"].tolist())


def test_reused_scratch_never_leaks_between_chunks_or_ops(monkeypatch):
    """Each thread reuses its temporaries (d = b - a, b + a) from chunk to chunk and op to op: a last chunk
    shorter than the others, an op of another width, and a chunk redone in float64 (its float32 sums
    overflow) give what a fresh computation gives."""
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((1, 40, 9)).astype(np.float32)
    narrow = rng.standard_normal((1, 40, 2)).astype(np.float32)
    huge = wide * np.float32(1e19)  # float32 squares overflow: redone in float64
    pairs = [(x, x + np.float32(0.01) * rng.standard_normal(x.shape).astype(np.float32)) for x in (wide, narrow, huge)]
    fresh = [op_metrics(a, b, layout="B,T,C") for a, b in pairs]
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 27)  # three time steps of `wide` a chunk: 13 full, one of 1
    monkeypatch.setattr(metrics, "_PARALLEL_ELEMENTS", 1)
    for _ in range(2):
        for (a, b), want in zip(pairs, fresh, strict=True):
            got = op_metrics(a, b, layout="B,T,C")
            for key in ("rel_l2", "cosine", "max_abs", "mismatch_share", "std_b"):
                assert got[key] == pytest.approx(want[key], rel=1e-5), key
            assert got["max_abs_index"] == want["max_abs_index"]


@pytest.mark.parametrize(
    "shape,layout",
    [((1, 40, 9), "B,T,C"), ((1, 9, 40), "B,C,T"), ((3, 5), None), ((1, 0, 4), "B,T,C"), ((), None)],
    ids=["rows", "strided", "2d", "empty", "scalar"],
)
def test_the_one_pass_kernel_gives_the_numpy_paths_metrics(shape, layout, monkeypatch):
    """compare's metrics for gigabyte traces (onepass.py, compiled) are the numpy path's: the sums to float
    precision, the worst element and its index, the count past the tolerance; a chunk with NaN or Inf goes
    to the numpy path, which counts them."""
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 27)
    monkeypatch.setattr(metrics, "_PARALLEL_ELEMENTS", 1)  # the kernel on threads, as a large op runs
    rng = np.random.default_rng(4)
    a = rng.standard_normal(shape).astype(np.float32)
    cases = {
        "close": a + np.float32(1e-6) * rng.standard_normal(shape).astype(np.float32),
        "far": -a + rng.standard_normal(shape).astype(np.float32),
        "same": a.copy(),
    }
    if a.size > 20:
        spiked = cases["close"].copy()
        spiked.flat[17] += 3  # the worst element
        nonfinite = spiked.copy()
        nonfinite.flat[5], nonfinite.flat[-1] = np.nan, np.inf
        cases.update(spiked=spiked, nonfinite=nonfinite)
    for name, b in cases.items():
        numpy_path = op_metrics(a, b, layout=layout)
        kernel = op_metrics(a, b, layout=layout, onepass=True)
        for key in ("rel_l2", "cosine", "worst_step_cosine", "max_abs", "mean_a", "std_b", "snr_db", "mismatch_share"):
            assert kernel[key] == pytest.approx(numpy_path[key], rel=1e-5, abs=1e-12), (name, key)
        for key in ("max_abs_index", "worst_step", "nan_a", "nan_b", "inf_b"):
            assert kernel[key] == numpy_path[key], (name, key)
        assert kernel["step_rel_error"].tolist() == pytest.approx(numpy_path["step_rel_error"].tolist(), rel=1e-5)
    if a.size > 20:
        assert op_metrics(a, cases["nonfinite"], layout=layout, onepass=True)["nan_b"] == 1


@pytest.mark.parametrize("rtol", [0.0, 1e-3])
def test_the_one_pass_kernel_counts_at_the_tolerance_edge(rtol):
    """The kernel skips the tolerance count of a row whose largest |b - a| is within atol (nothing there can
    pass atol + rtol |a|): at the edge, in float32 as both paths test it, it counts what the numpy path counts."""
    atol = 1e-5
    edge = np.float32(atol)
    a = np.zeros((3, 50), np.float32)  # |a| = 0: the limit is atol itself
    b = a.copy()
    b[0, :10] = edge  # at the limit: not past it
    b[1, :10] = edge
    b[1, 20:23] = np.nextafter(edge, np.float32(1))  # just past it: 3 of them
    b[2, 5] = -np.nextafter(edge, np.float32(1))  # past it, below zero
    numpy_path = op_metrics(a, b, layout="T,C", atol=atol, rtol=rtol)
    kernel = op_metrics(a, b, layout="T,C", atol=atol, rtol=rtol, onepass=True)
    assert numpy_path["mismatch_share"] * a.size == pytest.approx(4)
    assert kernel["mismatch_share"] == numpy_path["mismatch_share"]
    assert kernel["max_abs_index"] == numpy_path["max_abs_index"] == [1, 20]


def _exact(a, b):
    """cosine and rel L2 of float32 arrays in float64 throughout, from a.b (exact enough away from 1)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return a @ b / np.sqrt((a @ a) * (b @ b)), np.linalg.norm(b - a) / np.linalg.norm(a)


@pytest.mark.parametrize(
    "make",
    [
        lambda a, r: -a,  # cos -1
        lambda a, r: 2 * a,  # a scale: cos 1, rel L2 1
        lambda a, r: a * np.float32(1e25),  # far beyond the difference formula's reach
        lambda a, r: r.standard_normal(a.shape, dtype=np.float32),  # unrelated
        lambda a, r: a + np.float32(0.3) * r.standard_normal(a.shape, dtype=np.float32),
    ],
    ids=["negated", "doubled", "huge-scale", "unrelated", "noisy"],
)
def test_float32_metrics_match_float64_away_from_1(make):
    r = np.random.default_rng(3)
    a = r.standard_normal((1, 300, 64), dtype=np.float32)
    b = make(a, r).astype(np.float32)
    m = op_metrics(a, b, layout="B,T,C")
    cos, rel = _exact(a, b)
    assert m["cosine"] == pytest.approx(cos, abs=1e-6)
    assert m["rel_l2"] == pytest.approx(rel, rel=1e-5)


def test_float32_metrics_resolve_a_cosine_near_1():
    """1 - cos of a close pair, to a few digits: a.b / (|a||b|) in float32 (or even float64) would be all rounding."""
    r = np.random.default_rng(4)
    a = r.standard_normal((1, 400, 384), dtype=np.float32)
    b = a + np.float32(1e-6) * r.standard_normal(a.shape, dtype=np.float32)
    m = op_metrics(a, b, layout="B,T,C")
    x, y = a.astype(np.longdouble).ravel(), b.astype(np.longdouble).ravel()
    exact = 1 - (x @ y) / np.sqrt((x @ x) * (y @ y))
    assert 1e-14 < exact < 1e-11
    assert 1 - m["cosine"] == pytest.approx(float(exact), rel=1e-3)


def test_float32_sums_that_overflow_are_redone_in_float64():
    a = np.full((1, 4, 8), 3e20, np.float32)  # a.a is 7e42: beyond float32
    b = a * np.float32(1.5)
    m = op_metrics(a, b, layout="B,T,C")
    assert m["cosine"] == pytest.approx(1.0)
    assert m["rel_l2"] == pytest.approx(0.5)
    assert m["std_b"] == pytest.approx(0.0, abs=1e10) and m["mean_b"] == pytest.approx(4.5e20)
    assert (m["nan_a"], m["inf_a"], m["nan_b"], m["inf_b"]) == (0, 0, 0, 0)


def test_float32_std_of_values_far_from_zero():
    """A spread of 1e-3 around 1000: E[x^2] - mean^2 in float32-accumulated sums would be rounding."""
    r = np.random.default_rng(5)
    a = (1000 + 1e-3 * r.standard_normal((1, 200, 512))).astype(np.float32)
    b = a.copy()
    m = op_metrics(a, b, layout="B,T,C")
    assert m["std_a"] == pytest.approx(float(a.astype(np.float64).std()), rel=1e-4)
    assert m["std_ratio"] == 1.0


def test_op_metrics_refuses_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        op_metrics(np.zeros((1, 2)), np.zeros((2, 1)))


def test_rel_l2():
    assert rel_l2([3.0, 4.0], [3.0, 5.0]) == pytest.approx(0.2)
    assert rel_l2([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert rel_l2([0.0], [1.0]) == math.inf


def test_round_to_bfloat16_rounds_to_nearest_even():
    one = 1.0
    x = np.array([one + 2**-8, one + 3 * 2**-8, one + 2**-8 + 2**-20, 3.0, np.nan, np.inf], np.float32)
    r = round_to(x, "bfloat16")
    assert r[:4].tolist() == [1.0, 1.0 + 2**-6, 1.0 + 2**-7, 3.0]  # ties go to the even mantissa
    assert np.isnan(r[4]) and r[5] == np.inf


def test_round_to_float16_and_unknown_dtypes():
    r = round_to(np.array([1.0 + 2**-11, 1.0 + 3 * 2**-11, 70000.0], np.float32), "float16")
    assert r.tolist() == [1.0, 1.0 + 2**-9, math.inf]
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        round_to(np.ones(2), "tf32")


def test_rounding_error_is_the_rel_l2_of_rounding():
    x = np.array([1.0 + 2**-8], np.float32)
    assert rounding_error(x, "bfloat16") == pytest.approx(2**-8 / (1 + 2**-8))
    assert rounding_error(np.array([1.0, 0.5], np.float32), "float16") == 0.0


def test_new_nonfinite_only_when_b_has_more():
    row = {"nan_a": 1, "inf_a": 0, "nan_b": 0, "inf_b": 1}
    assert not new_nonfinite(row)
    assert new_nonfinite({**row, "nan_b": 1})
