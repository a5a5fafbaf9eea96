import shutil
import struct
import subprocess

import numpy as np
import pytest

import whisperdiff as wd
from whisperdiff.inputs.audio import default_audio_path, load_audio, log_mel, prepare_input, read_wav


def write_wav(path, samples: np.ndarray, rate: int, *, bits: int = 16, float_format: bool = False, channels: int = 1):
    """A RIFF/WAVE file written by hand, so the reader is tested against the format, not against itself."""
    frames = np.repeat(samples[:, None], channels, axis=1)
    if float_format:
        data, tag = frames.astype(np.float32 if bits == 32 else np.float64).tobytes(), 3
    elif bits == 8:
        data, tag = np.round(frames * 127 + 128).astype(np.uint8).tobytes(), 1
    elif bits == 24:
        ints = np.round(frames * (2**23 - 1)).astype(np.int32).reshape(-1)
        data, tag = np.stack([ints & 255, (ints >> 8) & 255, (ints >> 16) & 255], 1).astype(np.uint8).tobytes(), 1
    else:
        kind = {16: np.int16, 32: np.int32}[bits]
        data, tag = np.round(frames * np.iinfo(kind).max).astype(kind).tobytes(), 1
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_shipped_clip_is_small_16k_speech():
    path = default_audio_path()
    assert path.stat().st_size < 200_000
    samples, rate = read_wav(path)
    assert rate == 16000 and 3 < len(samples) / rate < 6
    assert np.abs(samples).max() > 0.1


@pytest.mark.parametrize(
    "rate,bits,float_format,channels",
    [
        (22050, 16, False, 1),
        (44100, 24, False, 2),
        (8000, 8, False, 1),
        (48000, 32, True, 1),
        (16000, 32, False, 2),
    ],
)
def test_wav_any_rate_and_encoding_is_read_and_resampled(tmp_path, rate, bits, float_format, channels):
    t = np.arange(int(rate * 0.5)) / rate
    write_wav(
        tmp_path / "tone.wav",
        0.5 * np.sin(2 * np.pi * 440 * t),
        rate,
        bits=bits,
        float_format=float_format,
        channels=channels,
    )
    samples, info = load_audio(tmp_path / "tone.wav")
    assert info == {"reader": "wav", "sample_rate": rate}
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    assert len(samples) == 8000
    core = slice(400, 7600)  # FFT resampling rings at the edges of a non-periodic clip
    assert np.max(np.abs(samples[core] - expected[core])) < (0.02 if bits == 8 else 2e-3)


def test_our_mel_equals_openai_whisper_pipeline():
    import whisper

    samples, _ = load_audio(default_audio_path())
    ours = log_mel(samples, 80)
    if shutil.which("ffmpeg"):  # whisper.load_audio needs ffmpeg
        theirs = whisper.log_mel_spectrogram(whisper.load_audio(str(default_audio_path())), 80, padding=480000)
        np.testing.assert_array_equal(ours, whisper.pad_or_trim(theirs[:, :3000], 3000).numpy())
    assert ours.shape == (80, 3000) and ours.dtype == np.float32
    assert ours.max() - ours.min() <= 2.0 + 1e-6  # Whisper's frontend clamps to max - 8 then scales by 1/4


def test_non_wav_without_ffmpeg_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp3"
    path.write_bytes(b"ID3\x03\x00\x00\x00" + bytes(100))
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg here
    with pytest.raises(wd.WhisperdiffError, match="not a WAV file and ffmpeg is not on PATH"):
        load_audio(path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (.ci/run installs it)")
def test_other_formats_go_through_ffmpeg(tmp_path):
    flac = tmp_path / "speech.flac"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(default_audio_path()), str(flac)], check=True)
    samples, info = load_audio(flac)
    wav_samples, _ = load_audio(default_audio_path())
    assert info["reader"] == "ffmpeg"
    np.testing.assert_allclose(samples, wav_samples, atol=1 / 32768)  # FLAC is lossless


def test_corrupt_and_missing_audio(tmp_path):
    with pytest.raises(wd.WhisperdiffError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(wd.WhisperdiffError, match="corrupt WAV"):
        load_audio(tmp_path / "bad.wav")
    write_wav(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(wd.WhisperdiffError, match="no audio samples"):
        load_audio(tmp_path / "empty.wav")


def test_precomputed_mel_is_checked_never_padded(tmp_path):
    good = np.zeros((80, 3000), np.float32)
    np.save(tmp_path / "good.npy", good)
    assert prepare_input(80, mel=tmp_path / "good.npy").mel.shape == (1, 80, 3000)
    np.save(tmp_path / "short.npy", np.zeros((80, 1500), np.float32))  # the 1500-frame input of the earlier port
    with pytest.raises(wd.WhisperdiffError, match="exactly 3000"):
        prepare_input(80, mel=tmp_path / "short.npy")
    with pytest.raises(wd.WhisperdiffError, match=r"shape \[80, 3000\]"):
        prepare_input(128, mel=tmp_path / "good.npy")
    bad = good.copy()
    bad[3, 7] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(wd.WhisperdiffError, match="NaN"):
        prepare_input(80, mel=tmp_path / "nan.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(wd.WhisperdiffError, match="cannot read"):
        prepare_input(80, mel=tmp_path / "obj.npy")


def test_input_provenance_records_digests():
    inp = prepare_input(80)
    p = inp.provenance
    assert p["default_clip"] and p["frontend"] == "whisper.audio.log_mel_spectrogram"
    assert len(p["sha256"]) == 64 and len(p["mel_sha256"]) == 64
    assert p["n_windows"] == 1 and p["mel_shape"] == [1, 80, 3000]
