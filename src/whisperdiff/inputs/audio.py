"""Encoder input: audio read from WAV (no ffmpeg needed) or through ffmpeg, turned into a log-mel
with openai-whisper's own frontend, or a precomputed log-mel from a .npy file.

The log-mel is recorded as the trace's first op (`mel`), so a port whose frontend differs from
Whisper's shows at op 0, not as a mysterious encoder bug.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.provenance import sha256_array, sha256_file

SAMPLE_RATE = 16000  # whisper.audio.SAMPLE_RATE
N_FRAMES = 3000  # whisper.audio.N_FRAMES: one 30 s window of 10 ms hops
N_SAMPLES = 480000  # whisper.audio.N_SAMPLES

_WAVE_FORMAT_PCM, _WAVE_FORMAT_FLOAT, _WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE


def default_audio_path() -> Path:
    """The short speech clip shipped with the package (espeak-ng; its text is in data/speech.txt)."""
    return Path(str(resources.files("whisperdiff") / "data" / "speech.wav"))


def default_audio_text() -> str:
    return (resources.files("whisperdiff") / "data" / "speech.txt").read_text().strip()


@dataclass
class EncoderInput:
    """One 30 s window of log-mel, [1, n_mels, 3000] float32, and where it came from."""

    mel: np.ndarray
    provenance: dict = field(default_factory=dict)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate, from a RIFF/WAVE file (PCM 8-32 bit or float)."""
    data = path.read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WhisperdiffError(f"{path} is not a WAV file (no RIFF/WAVE header)")
    fmt, pcm, off = None, None, 12
    while off + 8 <= len(data):
        chunk_id, size = data[off : off + 4], struct.unpack("<I", data[off + 4 : off + 8])[0]
        body = data[off + 8 : off + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise WhisperdiffError(f"{path}: corrupt WAV (fmt chunk of {len(body)} bytes)")
            fmt = struct.unpack("<HHIIHH", body[:16])
            if fmt[0] == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:  # real format is in the sub-format GUID
                fmt = (struct.unpack("<H", body[24:26])[0],) + fmt[1:]
        elif chunk_id == b"data":
            if len(body) != size:  # a header that disagrees with the file: truncated, or a made-up size
                raise WhisperdiffError(
                    f"{path}: the WAV header says {size} bytes of audio, the file holds {len(body)}; it is truncated "
                    "or its header is wrong (re-save it, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav)"
                )
            pcm = body
        off += 8 + size + (size & 1)
    if fmt is None or pcm is None:
        raise WhisperdiffError(f"{path}: corrupt WAV (missing {'fmt' if fmt is None else 'data'} chunk)")
    tag, channels, rate, _, _, bits = fmt
    if channels < 1 or rate < 1:
        raise WhisperdiffError(f"{path}: corrupt WAV header ({channels} channels at {rate} Hz)")
    width = bits // 8
    usable = len(pcm) - len(pcm) % (width * channels) if width else 0
    raw = pcm[:usable]
    if tag == _WAVE_FORMAT_PCM and bits == 8:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif tag == _WAVE_FORMAT_PCM and bits in (16, 32):
        kind = np.int16 if bits == 16 else np.int32
        samples = np.frombuffer(raw, kind).astype(np.float32) / float(-np.iinfo(kind).min)
    elif tag == _WAVE_FORMAT_PCM and bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend
        samples = ints.astype(np.float32) / 2**23
    elif tag == _WAVE_FORMAT_FLOAT and bits in (32, 64):
        samples = np.frombuffer(raw, np.float32 if bits == 32 else np.float64).astype(np.float32)
    else:
        raise WhisperdiffError(
            f"{path}: WAV encoding (format {tag}, {bits} bit) is not supported; convert it to 16-bit PCM or "
            "install ffmpeg and pass a non-WAV file"
        )
    if samples.size == 0:
        raise WhisperdiffError(f"{path} contains no audio samples")
    return samples.reshape(-1, channels).mean(axis=1), rate


def resample(samples: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling by FFT (exact for band-limited signals; what scipy.signal.resample does)."""
    if rate_in == rate_out:
        return samples.astype(np.float32)
    n_out = int(round(len(samples) * rate_out / rate_in))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    n_bins = n_out // 2 + 1
    spectrum = spectrum[:n_bins] if len(spectrum) >= n_bins else np.pad(spectrum, (0, n_bins - len(spectrum)))
    return (np.fft.irfft(spectrum, n_out) * (n_out / len(samples))).astype(np.float32)


def _ffmpeg_decode(path: Path) -> np.ndarray:
    """Decode any format ffmpeg knows to 16 kHz mono, the same command openai-whisper's load_audio runs."""
    if shutil.which("ffmpeg") is None:
        raise WhisperdiffError(
            f"{path} is not a WAV file and ffmpeg is not on PATH; install ffmpeg or convert the audio to WAV"
        )
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-threads",
        "0",
        "-i",
        str(path),
        "-f",
        "s16le",
        "-ac",
        "1",
        "-acodec",
        "pcm_s16le",
        "-ar",
        str(SAMPLE_RATE),
        "-",
    ]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"])[-1]
        raise WhisperdiffError(f"ffmpeg could not decode {path}: {last}")
    samples = np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0
    if samples.size == 0:
        raise WhisperdiffError(f"{path} contains no audio samples")
    return samples


def load_audio(path: str | Path) -> tuple[np.ndarray, dict]:
    """16 kHz mono float32 samples and how they were read."""
    path = Path(path)
    if not path.is_file():
        raise WhisperdiffError(f"audio file {path} does not exist; pass an existing file with --audio")
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        samples, rate = read_wav(path)
        info = {"reader": "wav", "sample_rate": rate}
        samples = resample(samples, rate)
    else:
        samples, info = _ffmpeg_decode(path), {"reader": "ffmpeg", "sample_rate": None}
    if not np.isfinite(samples).all():
        raise WhisperdiffError(f"{path} decodes to NaN or infinite samples; the file is corrupt")
    return samples, info


def log_mel(samples: np.ndarray, n_mels: int, window: int = 0) -> np.ndarray:
    """30 s window `window` of log-mel, [n_mels, 3000], exactly as whisper.transcribe computes it:
    the whole clip's log-mel (padded by 30 s of silence), sliced at seek = 3000 * window."""
    import torch
    from whisper.audio import log_mel_spectrogram, pad_or_trim

    mel = log_mel_spectrogram(torch.from_numpy(samples), n_mels=n_mels, padding=N_SAMPLES)
    seek = window * N_FRAMES
    return pad_or_trim(mel[:, seek : seek + N_FRAMES], N_FRAMES).numpy().astype(np.float32)


def n_windows(n_samples: int) -> int:
    """How many 30 s windows whisper.transcribe encodes for a clip of this length (at least one)."""
    return max(1, int(np.ceil(n_samples / N_SAMPLES)))


def load_mel_file(path: str | Path, n_mels: int) -> np.ndarray:
    """A precomputed log-mel from .npy ([n_mels, 3000] or [1, n_mels, 3000]), checked, never padded silently."""
    path = Path(path)
    if not path.is_file():
        raise WhisperdiffError(f"mel file {path} does not exist; pass an existing .npy file with --mel")
    try:
        mel = np.load(path, allow_pickle=False)
    except Exception as e:
        raise WhisperdiffError(
            f"cannot read {path} as a .npy array ({type(e).__name__}); save the mel with numpy.save"
        ) from None
    if mel.ndim == 3 and mel.shape[0] == 1:
        mel = mel[0]
    if mel.ndim != 2 or mel.shape[0] != n_mels:
        raise WhisperdiffError(
            f"{path} has shape {list(mel.shape)}; this model needs a log-mel of shape [{n_mels}, {N_FRAMES}]"
        )
    if mel.shape[1] != N_FRAMES:
        raise WhisperdiffError(
            f"{path} has {mel.shape[1]} frames; Whisper's encoder takes exactly {N_FRAMES} (30 s): "
            "pad it with whisper.pad_or_trim(mel, 3000)"
        )
    if not np.isfinite(mel).all():
        raise WhisperdiffError(f"{path} contains NaN or infinite values; recompute the log-mel")
    return mel.astype(np.float32)


def prepare_input(
    n_mels: int, audio: str | Path | None = None, mel: str | Path | None = None, window: int = 0
) -> EncoderInput:
    """The encoder's input window `window` plus provenance. With neither audio nor mel: the shipped clip."""
    if audio is not None and mel is not None:
        raise WhisperdiffError("give either --audio or --mel, not both")
    if mel is not None and window != 0:
        raise WhisperdiffError("a --mel file is one 30 s window; --window applies to --audio only")
    if mel is not None:
        array = load_mel_file(mel, n_mels)
        prov = {"kind": "mel", "path": str(Path(mel).resolve()), "sha256": sha256_file(mel), "frontend": "precomputed"}
    else:
        path = Path(audio) if audio is not None else default_audio_path()
        samples, info = load_audio(path)
        duration = len(samples) / SAMPLE_RATE
        count = n_windows(len(samples))
        if not 0 <= window < count:
            raise WhisperdiffError(
                f"--window {window} is out of range: {path} ({duration:.1f} s) has windows 0..{count - 1}"
            )
        array = log_mel(samples, n_mels, window)
        prov = {
            "kind": "audio",
            "path": str(path.resolve()),
            "sha256": sha256_file(path),
            "default_clip": audio is None,
            "duration_s": round(duration, 3),
            # One trace is one 30 s window; `trace --window all` / `transcribe` trace every window.
            "window": window,
            "n_windows": count,
            "frontend": "whisper.audio.log_mel_spectrogram",
            **info,
        }
    mel_batch = array[None]
    prov.update(mel_shape=list(mel_batch.shape), mel_sha256=sha256_array(mel_batch))
    return EncoderInput(mel_batch, prov)
