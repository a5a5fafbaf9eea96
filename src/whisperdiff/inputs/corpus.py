"""A corpus: many clips to sweep a port over, and the properties of each clip that divergence may depend on.

    whisperdiff corpus make DIR      # ~45 varied clips, made offline (espeak-ng speech, tones, noise)

A corpus is a folder of audio (any format `load_audio` reads) or a list file of paths, one a line
(relative paths are relative to the list file). `make_corpus` builds one on purpose: ports break on
inputs one clip never shows - short clips that are mostly padding, loud and clipped audio, silence and
noise, clips longer than one 30 s window - so the generated set has each of them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import wave
import zlib
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.inputs.audio import N_SAMPLES, SAMPLE_RATE, load_audio, n_windows, read_wav, resample

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm")
SILENCE_DBFS = -50.0  # a 20 ms frame quieter than this counts as silence
PROPERTIES = {  # the clip properties divergence is explained by (corpus report), with their units
    "duration_s": "s",
    "loudness_dbfs": "dBFS",
    "peak_dbfs": "dBFS",
    "silence_share": "",
    "padding_share": "",
    "n_windows": "",
}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A port of a neural network is only as good as the tests it passes.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her on Wednesday.",
    "The weather today is cloudy with a chance of rain later in the evening.",
    "Numbers like forty two and nineteen eighty four are hard to transcribe.",
    "Every encoder layer adds a little error, and the last one decides the words.",
    "Open the window, turn off the light, and close the door behind you.",
]
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f3"]
WORDS = ["yes", "stop", "hello", "seven", "okay"]


def _pcm16(path: Path, samples: np.ndarray) -> None:
    """16 kHz mono 16-bit PCM; samples beyond [-1, 1] are clipped, as a recorder would."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm.tobytes())


def _espeak(text: str, voice: str, speed: int, pitch: int, work: Path) -> np.ndarray:
    out = work / "espeak.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not out.is_file():
        raise WhisperdiffError(f"espeak-ng failed for voice {voice!r}: {done.stderr.strip()[:200]}")
    samples, rate = read_wav(out)
    return resample(samples, rate)


def _db(x: float) -> float:
    return float(10 ** (x / 20))


def _normalise(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    return x * (_db(peak_dbfs) / max(float(np.abs(x).max()), 1e-9))


def _tone(freqs, seconds: float, rng, harmonics: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(
        sum(np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6.28)) / h for h in range(1, harmonics + 1)) for f in freqs
    )
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # 20 ms fades: no clicks
    return x * fade


def _melody(notes, note_s: float, rng) -> np.ndarray:
    return np.concatenate([_tone([f], note_s, rng, harmonics=4) for f in notes])


def _noise(kind: str, seconds: float, rng) -> np.ndarray:
    white = rng.standard_normal(int(seconds * SAMPLE_RATE))
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(len(white)), 1e-4)
    return np.fft.irfft(spectrum / (np.sqrt(f) if kind == "pink" else f), n=len(white))


def _recipes(rng) -> list[tuple[str, str, object]]:
    """(clip name, kind, a function of the espeak helper giving its samples): ~45 clips, each kind of trouble."""
    recipes = []
    for i in range(20):  # plain speech: voices x speeds x pitches, normal level
        voice, text = VOICES[i % len(VOICES)], SENTENCES[i % len(SENTENCES)]
        speed, pitch = [150, 175, 130, 200][i // 5], [50, 35, 70, 55][(i + i // 5) % 4]
        recipes.append(
            (f"speech-{i:02d}", "speech", lambda s, v=voice, t=text, sp=speed, p=pitch: _normalise(s(t, v, sp, p), -3))
        )
    for i, word in enumerate(WORDS):  # very short: over 95% of the window is padding
        recipes.append((f"short-{word}", "short", lambda s, w=word, v=VOICES[i]: _normalise(s(w, v, 160, 50), -3)))
    recipes.append(("short-beep", "short", lambda s: _normalise(_tone([880], 0.4, rng), -6)))
    for i in range(3):  # loud and clipped speech: +20 dB into a 16-bit recorder
        text, voice = SENTENCES[(i + 3) % len(SENTENCES)], VOICES[(i + 1) % len(VOICES)]
        recipes.append((f"loud-speech-{i}", "loud", lambda s, t=text, v=voice: _normalise(s(t, v, 160, 50), 17)))
    recipes.append(("loud-square", "loud", lambda s: np.sign(_tone([220], 4.0, rng)) * 0.98))
    recipes.append(("loud-sine", "loud", lambda s: _normalise(_tone([440], 4.0, rng), -0.5)))
    for i in range(2):  # quiet speech
        recipes.append(
            (f"quiet-speech-{i}", "quiet", lambda s, t=SENTENCES[i + 6]: _normalise(s(t, "en-us", 170, 50), -32))
        )
    for i, seconds in enumerate([5.0, 12.0]):  # room tone: near silence (never digital zero)
        recipes.append((f"room-tone-{i}", "silence", lambda s, n=seconds: _normalise(_noise("pink", n, rng), -62)))
    for kind, level in [("white", -18), ("pink", -12), ("brown", -10)]:
        recipes.append((f"noise-{kind}", "noise", lambda s, k=kind, lv=level: _normalise(_noise(k, 5.0, rng), lv)))
    recipes.append(("music-chord", "music", lambda s: _normalise(_tone([261.6, 329.6, 392.0], 5.0, rng, 3), -12)))
    recipes.append(("music-arpeggio", "music", lambda s: _normalise(_melody([262, 330, 392, 523] * 3, 0.4, rng), -12)))
    recipes.append(
        (
            "music-melody",
            "music",
            lambda s: _normalise(_melody([392, 440, 494, 523, 494, 440, 392, 330] * 2, 0.3, rng), -14),
        )
    )
    for i in range(2):  # speech over noise
        recipes.append(
            (f"speech-in-noise-{i}", "speech", lambda s, t=SENTENCES[i + 1]: _in_noise(s(t, "en-gb", 160, 50), rng))
        )
    for seconds in (42.0, 65.0):  # longer than one window: several 30 s windows
        recipes.append((f"long-{int(seconds)}s", "long", lambda s, n=seconds: _long(s, n)))
    return recipes


def _in_noise(speech: np.ndarray, rng) -> np.ndarray:
    return _normalise(_normalise(speech, -6) + _normalise(_noise("pink", len(speech) / SAMPLE_RATE, rng), -26), -3)


def _long(speak, seconds: float) -> np.ndarray:
    parts, total, i = [], 0, 0
    while total < seconds * SAMPLE_RATE:
        clip = _normalise(speak(SENTENCES[i % len(SENTENCES)], VOICES[i % len(VOICES)], 170, 50), -3)
        parts += [clip, np.zeros(SAMPLE_RATE // 2)]
        total += len(clip) + SAMPLE_RATE // 2
        i += 1
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


def make_corpus(
    directory: str | Path,
    *,
    limit: int | None = None,
    kinds: list[str] | None = None,
    names: list[str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write the generated corpus into `directory` (16 kHz 16-bit WAV) plus corpus.json (each clip's kind
    and properties); returns the clip paths. kinds / names / limit pick a subset (tests use a few clips);
    each clip is the same whatever subset is made."""
    if shutil.which("espeak-ng") is None:
        raise WhisperdiffError(
            "espeak-ng is not installed; install it (apt-get install espeak-ng) or use any folder of recordings as the corpus"
        )
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WhisperdiffError(f"{directory} is a file; pass a folder to write the corpus into")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recipes = [r for r in _recipes(rng) if (kinds is None or r[1] in kinds) and (names is None or r[0] in names)]
    recipes = recipes[:limit]
    if not recipes:
        raise WhisperdiffError(
            f"no clip of kinds {kinds}; kinds are speech, short, loud, quiet, silence, noise, music, long"
        )
    index, paths = {}, []
    with tempfile.TemporaryDirectory() as tmp:

        def speak(text, voice, speed, pitch):
            return _espeak(text, voice, speed, pitch, Path(tmp))

        for name, kind, make in recipes:
            path = directory / f"{name}.wav"
            # Each clip its own random stream: the same clip whatever subset is made.
            rng.bit_generator.state = np.random.default_rng([seed, zlib.crc32(name.encode())]).bit_generator.state
            _pcm16(path, np.asarray(make(speak), dtype=np.float64))
            samples, _ = load_audio(path)
            index[path.name] = {"kind": kind, **clip_properties(samples)}
            paths.append(path)
    (directory / "corpus.json").write_text(json.dumps(index, indent=1) + "\n")
    return paths


def clip_properties(samples: np.ndarray) -> dict:
    """What divergence may depend on: duration, loudness (RMS of the non-silent 20 ms frames), peak,
    the share of silent frames, the share of window 0 that is padding, and the number of 30 s windows."""
    x = np.asarray(samples, dtype=np.float64)
    hop = SAMPLE_RATE // 50
    frames = x[: len(x) // hop * hop].reshape(-1, hop) if len(x) >= hop else x.reshape(1, -1)
    rms = np.sqrt((frames**2).mean(axis=1)) if frames.size else np.zeros(1)
    level = 20 * np.log10(np.maximum(rms, 1e-10))
    active = level >= SILENCE_DBFS
    loud = np.sqrt((frames[active] ** 2).mean()) if active.any() else float(rms.max(initial=0.0))
    return {
        "duration_s": round(len(x) / SAMPLE_RATE, 3),
        "loudness_dbfs": round(20 * float(np.log10(max(loud, 1e-10))), 2),
        "peak_dbfs": round(20 * float(np.log10(max(float(np.abs(x).max(initial=0.0)), 1e-10))), 2),
        "silence_share": round(float(1 - active.mean()), 3),
        "padding_share": round(max(0.0, 1 - len(x) / N_SAMPLES), 3),
        "n_windows": n_windows(len(x)),
    }


def list_corpus(source: str | Path) -> list[Path]:
    """The clips of a corpus: the audio files of a folder (sorted, subfolders too) or the paths of a list file."""
    source = Path(source)
    if source.is_dir():
        clips = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not clips:
            raise WhisperdiffError(
                f"{source} holds no audio ({', '.join(AUDIO_SUFFIXES)}); make one with `whisperdiff corpus make {source}`"
            )
        return clips
    if source.is_file():
        lines = [line.strip() for line in source.read_text(errors="replace").splitlines()]
        clips = [(source.parent / line) for line in lines if line and not line.startswith("#")]
        if not clips:
            raise WhisperdiffError(f"{source} lists no audio file; write one path per line")
        return clips
    raise WhisperdiffError(f"corpus {source} does not exist; pass a folder of audio or a list file of paths")
