"""The log-mel frontend replayed on the audio, the ways a port computes it differently.

Whisper's frontend (whisper/audio.py): the clip padded with 30 s of zeros, an STFT with a periodic Hann
window of n_fft 400 and hop 160, power |X|^2, a Slaney mel filterbank, log10 clamped at 1e-10, then at
max - 8 over the whole spectrogram, then (x + 4) / 4. A port's frontend differs in one of those choices;
when the audio is at hand (the shipped clip, or a file the user names, checked against the trace's
sha256), each choice is replayed and scored against B's log-mel, so the finding says which one it is.
Pure functions of the samples; torch only for the STFT.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError

SAMPLE_RATE, N_FFT, HOP, N_SAMPLES, N_FRAMES = 16000, 400, 160, 480000, 3000


def slaney_filters(n_fft: int, n_mels: int, sr: int = SAMPLE_RATE, htk: bool = False, norm: bool = True) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) (Slaney scale and norm), the filterbank Whisper ships for 400;
    htk=True: the HTK mel scale; norm=False: triangles of height 1 (no area normalisation)."""

    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        if htk:
            return 2595 * np.log10(1 + f / 700)
        return np.where(f < 1000, f / (200 / 3), 15 + np.log(np.maximum(f, 1e-10) / 1000) / (math.log(6.4) / 27))

    def mel_to_hz(m):
        m = np.asarray(m, np.float64)
        if htk:
            return 700 * (10 ** (m / 2595) - 1)
        return np.where(m < 15, m * (200 / 3), 1000 * np.exp((m - 15) * (math.log(6.4) / 27)))

    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fft_f = np.linspace(0, sr / 2, 1 + n_fft // 2)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    if not norm:
        return weights.astype(np.float32)
    return (weights * (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]).astype(np.float32)


def log_mel_variant(
    samples: np.ndarray,
    n_mels: int,
    window_index: int = 0,
    *,
    n_fft: int = N_FFT,
    hop: int = HOP,
    window: str = "hann",
    periodic: bool = True,
    power: float = 2.0,
    floor: str = "global",
    floor_db: float = 8.0,
    floor_at: float | None = None,
    band_hz: float | None = None,
    center: bool = True,
    preemphasis: float | None = None,
    htk: bool = False,
    norm: bool = True,
    frame_shift: int = 0,
) -> np.ndarray:
    """One 30 s window [n_mels, 3000] of the log-mel computed with these choices (defaults: Whisper's)."""
    import torch

    x = torch.from_numpy(np.asarray(samples, np.float32))
    x = torch.nn.functional.pad(x, (0, N_SAMPLES))
    if band_hz is not None:  # the audio band-limited (resampled through 2 x band_hz): nothing above band_hz
        spec = torch.fft.rfft(x.double())
        freqs = torch.fft.rfftfreq(x.shape[0], 1 / SAMPLE_RATE)
        spec[freqs > band_hz] = 0
        x = torch.fft.irfft(spec, n=x.shape[0]).float()
    if preemphasis is not None:  # y[n] = x[n] - a x[n-1]
        x = torch.cat([x[:1], x[1:] - preemphasis * x[:-1]])
    make = {"hann": torch.hann_window, "hamming": torch.hamming_window, "blackman": torch.blackman_window}[window]
    stft = torch.stft(x, n_fft, hop, window=make(n_fft, periodic=periodic), center=center, return_complex=True)
    mag = stft[..., :-1].abs() ** power
    if frame_shift:  # the first frame(s) dropped: every later frame moves up
        mag = torch.nn.functional.pad(mag[:, frame_shift:], (0, frame_shift))
    filters = _filters(n_fft, n_mels) if not htk and norm else slaney_filters(n_fft, n_mels, htk=htk, norm=norm)
    mel = torch.from_numpy(filters) @ mag
    log = torch.clamp(mel, min=1e-10).log10()
    if floor_at is not None:
        log = torch.maximum(log, torch.tensor(floor_at))
    elif floor == "frame":
        log = torch.maximum(log, log.max(0, keepdim=True).values - floor_db)
    elif floor == "band":
        log = torch.maximum(log, log.max(1, keepdim=True).values - floor_db)
    else:
        log = torch.maximum(log, log.max() - floor_db)
    log = (log + 4.0) / 4.0
    seek = window_index * round(N_FRAMES * HOP / hop)
    out = log[:, seek : seek + N_FRAMES]
    if out.shape[1] < N_FRAMES:
        out = torch.nn.functional.pad(out, (0, N_FRAMES - out.shape[1]))
    return out.numpy().astype(np.float32)


def _filters(n_fft: int, n_mels: int) -> np.ndarray:
    if n_fft == N_FFT:
        from whisper.audio import mel_filters

        return mel_filters("cpu", n_mels).numpy()
    return slaney_filters(n_fft, n_mels)


def frontend_variants(b_mel: np.ndarray) -> dict[str, dict]:
    """Each usual way a port's frontend differs, as log_mel_variant keyword arguments, by its explanation."""
    found = {
        "a symmetric Hann window (n - 1 in the denominator) instead of the periodic one": {"periodic": False},
        "a periodic Hamming window instead of Hann": {"window": "hamming"},
        "a symmetric Hamming window instead of the periodic Hann": {"window": "hamming", "periodic": False},
        "a Blackman window instead of Hann": {"window": "blackman"},
        "magnitude |X| instead of power |X|^2 before the mel filterbank": {"power": 1.0},
        "the clamp floor max - 8 taken per frame instead of over the whole spectrogram": {"floor": "frame"},
        "the clamp floor max - 8 taken per mel band instead of over the whole spectrogram": {"floor": "band"},
        "the STFT not centred (no reflect padding of n_fft / 2: frames start at 0, not -200 samples)": {
            "center": False
        },
        "a pre-emphasis filter (x[n] - 0.97 x[n-1]) before the STFT": {"preemphasis": 0.97},
        "the HTK mel scale (2595 log10(1 + f/700)) instead of Slaney's": {"htk": True},
        "mel filters without Slaney's area normalisation (triangles of height 1)": {"norm": False},
        "the first STFT frame dropped: every frame one hop early": {"frame_shift": 1},
    }
    for n_fft in (256, 512, 1024):
        found[f"n_fft {n_fft} (window {n_fft}, filterbank for {n_fft // 2 + 1} bins) instead of 400"] = {"n_fft": n_fft}
    for hop in (100, 128, 150, 170, 200, 320):
        found[f"hop length {hop} instead of 160 (frames then trimmed or padded to 3000)"] = {"hop": hop}
    for band in (4000.0, 5512.5, 3000.0):
        found[
            f"the audio band-limited to {band / 1000:g} kHz (resampled through {2 * band / 1000:g} kHz): "
            "nothing above it"
        ] = {"band_hz": band}
    floor_b = 4 * float(np.min(b_mel)) - 4  # B's clamp floor, solved from its minimum (log10 units)
    if abs(floor_b + 10) < 1e-3:  # log10(1e-10): only the clamp before the log, none at max - 8
        found["no clamp at max - 8: only the 1e-10 floor before the log (log10 S = -10)"] = {"floor_at": -10.0}
    else:
        found[
            f"the clamp floor at log10 S = {floor_b:.3f}, solved from B's minimum (not max - 8 of this window's "
            "log-mel: another maximum, or another offset)"
        ] = {"floor_at": floor_b}
    return found


def replay_frontend(samples: np.ndarray, a_mel: np.ndarray, b_mel: np.ndarray, window_index: int = 0) -> list[tuple]:
    """[(explanation, rel L2 of B against that frontend, extra)] for every variant, best first; also Whisper's
    own frontend replayed (a check that the audio is the one A was computed from)."""
    n_mels = b_mel.shape[-2]
    b = np.asarray(b_mel, np.float64).reshape(n_mels, -1)

    def score(c):
        c = np.asarray(c, np.float64).reshape(b.shape)
        n = np.linalg.norm(c)
        return float(np.linalg.norm(b - c) / n) if n > 0 and c.shape == b.shape else math.inf

    out = []
    for label, kw in frontend_variants(b).items():
        try:
            out.append((label, score(log_mel_variant(samples, n_mels, window_index, **kw)), kw))
        except (RuntimeError, ValueError):  # a variant this clip cannot take is not evidence
            continue
    return sorted(out, key=lambda h: h[1])


def audio_at_hand(manifest: dict, path=None) -> tuple[tuple[np.ndarray, int] | None, str | None]:
    """((samples, window index), None) when the trace's audio is at hand, else (None, why not or None).

    The audio is at hand when the user names a file whose sha256 is the trace's input, or when the trace's
    input is the clip that ships with whisperdiff. A path the trace names is never opened (reading a trace
    is inert)."""
    from whisperdiff.inputs.audio import default_audio_path, load_audio
    from whisperdiff.provenance import sha256_file

    inp = manifest.get("input") or {}
    if inp.get("kind") != "audio" or not isinstance(inp.get("sha256"), str):
        return None, None
    window = inp.get("window") if isinstance(inp.get("window"), int) else 0
    if path is None:
        shipped = default_audio_path()
        if not inp.get("default_clip") or sha256_file(shipped) != inp["sha256"]:
            return None, None
        path = shipped
    elif not Path(path).is_file():
        raise WhisperdiffError(f"--audio {path}: no such file; give the clip the traces were made from")
    elif sha256_file(path) != inp["sha256"]:
        return None, f"--audio {path} is not the traced input (sha256 differs): the frontend is not replayed"
    samples, _ = load_audio(path)
    return (samples, window), None
