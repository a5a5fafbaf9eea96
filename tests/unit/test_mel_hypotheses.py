"""analysis/hypotheses_frontend.py: the pure-NumPy parts (log-mel hypotheses, sinusoid tables)."""

import math

import numpy as np
import pytest

from whisperdiff.analysis.hypotheses import mel_hypotheses, sinusoids

RNG = np.random.default_rng(0)
S = 10.0 ** RNG.uniform(-14, 2, size=(8, 50))  # a power spectrogram spanning more than Whisper's 8 decades


def whisper_log_mel(s):
    log10 = np.log10(s)
    return (np.maximum(log10, log10.max() - 8) + 4) / 4


def best(a, b) -> tuple[str, float]:
    return min(mel_hypotheses(a, b), key=lambda h: h[1])


def test_the_natural_log_frontend_is_named():
    ln = np.log(S)
    b = (np.maximum(ln, ln.max() - 8) + 4) / 4
    label, err = best(whisper_log_mel(S), b)
    assert label.startswith("natural log instead of log10")
    assert err < 1e-12


def test_missing_normalisation_and_an_affine_transform():
    a = whisper_log_mel(S)
    label, err = best(a, 4 * a - 4)
    assert label == "no (x + 4) / 4 normalisation: the clamped log10 S" and err < 1e-12
    label, err = best(a, 2 * a + 1)
    assert label == "an affine transform of Whisper's log-mel: B = 2 * A +1 (another normalisation)" and err < 1e-12


def test_a_missing_clamp():
    a = whisper_log_mel(S)
    b = np.log10(S) / 4 + 1  # the normalisation without the clamp at max - 8
    label, err = best(a, b)
    assert label == "the clamp at max - 8 is missing (values below Whisper's floor)" and err < 1e-12


def test_sinusoids_layouts():
    t = sinusoids(5, 8)
    assert t.shape == (5, 8)
    assert t[0].tolist() == [0.0] * 4 + [1.0] * 4  # sin half, then cos half
    inc = math.log(10000) / 3  # Whisper: timescales over channels/2 - 1
    assert t[2, 1] == pytest.approx(math.sin(2 * math.exp(-inc)))
    assert sinusoids(5, 8, half=True)[2, 1] == pytest.approx(math.sin(2 * math.exp(-math.log(10000) / 4)))
    assert sinusoids(5, 8, interleave=True)[0].tolist() == [0.0, 1.0] * 4
    assert sinusoids(5, 8, cos_first=True)[0].tolist() == [1.0] * 4 + [0.0] * 4
