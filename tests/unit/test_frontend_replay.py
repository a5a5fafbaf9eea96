"""The log-mel frontend replayed on the audio: Whisper's own frontend reproduced exactly, each variant told
apart from the others on the shipped clip, and compare naming a port's frontend bug from its own log-mel."""

import numpy as np
import pytest
from whisper.audio import mel_filters

import whisperdiff as wd
from whisperdiff.analysis.frontend_replay import log_mel_variant, replay_frontend, slaney_filters
from whisperdiff.inputs.audio import default_audio_path, load_audio, log_mel


@pytest.fixture(scope="module")
def clip():
    samples, _ = load_audio(default_audio_path())
    return samples, log_mel(samples, 80)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_the_slaney_filterbank_is_the_one_whisper_ships(n_mels):
    assert np.abs(slaney_filters(400, n_mels) - mel_filters("cpu", n_mels).numpy()).max() < 1e-6


def test_the_default_variant_is_whispers_frontend_exactly(clip):
    samples, ref = clip
    assert np.array_equal(log_mel_variant(samples, 80), ref)


@pytest.mark.parametrize(
    "variant, words",
    [
        ({"periodic": False}, "symmetric Hann"),
        ({"window": "hamming"}, "periodic Hamming"),
        ({"n_fft": 512}, "n_fft 512"),
        ({"hop": 170}, "hop length 170"),
        ({"floor": "frame"}, "per frame"),
        ({"power": 1.0}, "magnitude"),
        ({"band_hz": 4000.0}, "band-limited to 4 kHz"),
        ({"floor_at": -6.0}, "clamp floor at log10 S = -6.000"),
        ({"center": False}, "not centred"),
        ({"htk": True}, "HTK mel scale"),
        ({"preemphasis": 0.97}, "pre-emphasis"),
        ({"floor": "band"}, "per mel band"),
    ],
)
def test_each_frontend_variant_is_named_by_its_replay(clip, variant, words):
    samples, ref = clip
    port = log_mel_variant(samples, 80, **variant)
    label, err, _ = replay_frontend(samples, ref, port)[0]
    assert words in label and err < 1e-6, (label, err)


def test_compare_names_a_ports_frontend_from_its_own_log_mel(clip, small_random, tmp_path):
    samples, _ = clip
    ref = wd.trace("torch", model=small_random, out=tmp_path / "ref", taps="output")
    with wd.Tracer(tmp_path / "port", impl="mine", model=small_random) as t:
        t.record("mel", log_mel_variant(samples, small_random.dims.n_mels, periodic=False)[None])
    c = wd.compare(ref, tmp_path / "port")
    top = c.findings[0]
    assert (top.op, top.kind) == ("mel", "input_mismatch") and "symmetric Hann window" in top.message, top.message
    with pytest.raises(wd.WhisperdiffError, match="no such file"):  # a clip the user names must exist
        wd.compare(ref, tmp_path / "port", audio=tmp_path / "missing.wav")
