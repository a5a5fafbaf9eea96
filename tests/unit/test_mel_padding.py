"""A log-mel that differs only in its padding frames is said to, with what the padding holds (issue 22):
never the advice to use Whisper's frontend when the audio frames already agree."""

import numpy as np

from whisperdiff.analysis.diagnose import mel_padding


def whisper_like(frames=400, t=3000, n_mels=80, seed=0):
    rng = np.random.default_rng(seed)
    a = np.full((1, n_mels, t), -0.7256, np.float32)  # Whisper's floor where the audio was zero-padded
    a[..., :frames] = rng.uniform(-0.7, 1.2, (1, n_mels, frames)).astype(np.float32)
    return a


def test_padding_with_zeros_is_named_with_what_it_holds():
    a = whisper_like()
    b = a.copy()
    b[..., 400:] = 0.0
    message = mel_padding(a, b, 400)
    assert message.startswith("the log-mels differ only in the padding after the audio (100.0%")
    assert "frames >= 400 of 3000" in message and "B's padding holds the constant 0" in message
    assert "-0.7256" in message and "pad the waveform with zeros" in message


def test_a_difference_in_the_audio_frames_is_not_called_padding():
    a = whisper_like()
    b = a.copy()
    b[..., 400:] = 0.0
    b[..., :400] *= 1.5  # the audio frames differ too: another frontend
    assert mel_padding(a, b, 400) is None
    assert mel_padding(a, a * 1.05, 400) is None
    assert mel_padding(a, b, None) is None  # the audio length unknown: no claim
