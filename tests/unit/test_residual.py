"""analysis/residual.py: the facts it states about a synthetic B - A, and the audio length it infers."""

import numpy as np
import pytest

from whisperdiff.analysis.residual import describe, representable_share, steps_with_audio, valid_steps

RNG = np.random.default_rng(0)
E = RNG.standard_normal((1, 40, 8))  # B, T, C


def facts(b, e=E, layout="B,T,C", **kw) -> list[str]:
    return describe(b, e, layout, **kw).split("; ")


def test_a_global_factor():
    assert facts(1.5 * E)[0] == "best global factor 1.5 leaves 0% of the error"
    noise = E + 0.1 * RNG.standard_normal(E.shape)
    assert facts(noise)[0] == "no global factor explains it"


def test_a_per_channel_offset_and_the_model_vector_it_equals():
    bias = RNG.standard_normal(8)
    other = RNG.standard_normal(8)
    found = facts(E + bias, vectors={"encoder.conv1.bias": bias, "encoder.ln_post.bias": other})
    assert "100% of it is constant over time per channel (closest model vector: +1 x conv1.bias, cosine 1.000)" in found
    found = facts(E - 2 * bias, vectors={"encoder.conv1.bias": bias})
    assert any("-2 x conv1.bias" in f for f in found)
    assert "100% of it is constant over time per channel" in facts(E + bias)  # no vectors: no name


def test_error_in_a_few_steps_and_in_the_padding():
    b = E.copy()
    b[:, 5:7] += 1.0
    assert "90% of it in 2 of 40 time steps (5-6)" in facts(b)
    b = E.copy()
    b[:, 30:] += RNG.standard_normal((1, 10, 8))
    # 2250 mel frames of 3000 hold audio: 30 of the op's 40 steps
    assert (
        "100% of it lies in the padding after the audio (steps >= 30 of 40), which is 25% of the window: "
        "concentrated in the padding" in facts(b, audio_frames=2250)
    )
    assert not any("padding" in f for f in facts(b))


def test_error_in_one_heads_channels():
    b = E.copy()
    b[..., :4] += RNG.standard_normal((1, 40, 4))
    assert "90% of it in 1 of 2 heads' channels (0)" in facts(b, n_head=2)
    b = E.copy()
    b[..., 6] += 1.0
    assert any(f.startswith("90% of it in 1 of 8 channels (6)") for f in facts(b))


def test_attention_probabilities_share_per_head():
    e = RNG.random((1, 2, 5, 5))
    b = e.copy()
    b[:, 1] += 0.5
    assert "share per head 0%, 100%" in facts(b, e, layout="B,H,T_q,T_k")


def test_nothing_to_say():
    assert describe(E, E, "B,T,C") == ""
    assert describe(E, E[:, :5], "B,T,C") == ""  # shapes differ


def test_valid_steps_from_the_manifest_or_the_mel():
    assert valid_steps({"input": {"duration_s": 12.5}}) == 1250
    assert valid_steps({"input": {"duration_s": 40.0, "window": 1}}) == 1000  # the second 30 s window
    assert valid_steps({"input": {"duration_s": 99.0}}) == 3000
    mel = np.full((1, 80, 3000), -0.5)  # the zero padding leaves Whisper's floor (max - 8, normalised)
    mel[..., :700] += 0.01 + RNG.random((1, 80, 700))
    assert valid_steps({}, mel) == 700
    assert valid_steps({"input": None}) is None
    assert valid_steps({}, np.full((80, 3000), -0.5)) is None


def test_steps_with_audio():
    assert steps_with_audio(2250, 40) == 30
    assert steps_with_audio(1, 1500) == 1
    assert steps_with_audio(3000, 1500) == 1500
    assert steps_with_audio(None, 1500) is None


def test_representable_share():
    x = np.array([1.0, 1.5, 1.0 + 2**-10, 0.0, np.nan], np.float32)  # zero and NaN are left out
    assert representable_share(x, "bfloat16") == pytest.approx(2 / 3)
    assert representable_share(x, "float16") == 1.0
    assert representable_share(np.array([1.0 + 2**-12], np.float32), "float16") == 0.0
    assert representable_share(np.zeros(3), "bfloat16") == 0.0
