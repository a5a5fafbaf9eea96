"""Does it matter? The transcript an encoder output decodes to, and how far two transcripts differ.

The decoder is always openai-whisper's own (greedy, temperature 0, no timestamps, float32 on CPU),
fed the encoder output of whichever implementation ran: so two transcripts differ only because
the encoders do.
"""

from __future__ import annotations

import numpy as np

DECODER = "openai-whisper decode: greedy, temperature 0, without timestamps, float32 on CPU"


class Decoder:
    """openai-whisper's decoder for one model; build once, call per window (encoder output -> text)."""

    def __init__(self, loaded):
        import torch

        self.model = loaded.whisper_model("cpu", torch.float32)

    def __call__(self, features: np.ndarray, max_tokens: int | None = None) -> str:
        """features: the encoder output, [1, n_audio_ctx, n_audio_state] (the `ln_post` op).
        max_tokens: stop early (a broken encoder can make the decoder loop to its 224-token limit)."""
        import torch
        import whisper

        options = whisper.DecodingOptions(
            language=None if self.model.is_multilingual else "en",
            fp16=False,
            without_timestamps=True,
            temperature=0.0,
            sample_len=max_tokens,
        )
        x = torch.from_numpy(np.array(features, dtype=np.float32)[0])  # a writable copy
        with torch.inference_mode():
            return whisper.decode(self.model, x, options).text.strip()


def token_cap(reference_text: str) -> int:
    """How many tokens to decode for a candidate: enough for the reference's text twice over, so a
    broken encoder that makes the decoder loop does not cost its full 224-token limit. The one cap
    every WER uses (compare, report, patch), whether B was decoded now or its text stored earlier."""
    return 2 * len(reference_text.split()) + 16


CAP_RULE = "B decoded up to 2 x A's words + 16 tokens"


def cap_note(max_tokens: int | None) -> str:
    """How a WER's candidate text was limited, for every place that prints one."""
    return f"B decoded up to {max_tokens} tokens (2 x A's words + 16)" if max_tokens else "uncapped"


def capped(text: str, max_tokens: int, multilingual: bool = False) -> str:
    """`text` cut to its first `max_tokens` tokens: what decoding with that cap gives (greedy decoding
    is deterministic, so a capped run is a prefix of the uncapped one). Used on transcripts stored
    uncapped by `trace --transcribe`."""
    from whisper.tokenizer import get_tokenizer

    tokens = get_tokenizer(multilingual).encoding.encode(" " + text.strip())
    if len(tokens) <= max_tokens:
        return text
    return get_tokenizer(multilingual).encoding.decode(tokens[:max_tokens]).strip()


def normalise(text: str) -> str:
    """Whisper's English normaliser: lower case, no punctuation, spelled-out forms unified."""
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()(text)


def error_rate(reference: list, hypothesis: list) -> float:
    """Levenshtein distance / len(reference): word error rate over words, character error rate over characters."""
    if not reference:
        return 0.0 if not hypothesis else 1.0
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(reference)


def wer(reference: str, hypothesis: str) -> float:
    return error_rate(normalise(reference).split(), normalise(hypothesis).split())


def cer(reference: str, hypothesis: str) -> float:
    return error_rate(list(normalise(reference)), list(normalise(hypothesis)))


def word_diff(reference: str, hypothesis: str) -> list[tuple[str, str]]:
    """(tag, text) runs: tag "=" same, "-" only in the reference, "+" only in the hypothesis (difflib over words)."""
    import difflib

    a, b = reference.split(), hypothesis.split()
    runs = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            runs.append(("=", " ".join(a[i1:i2])))
        else:
            if i2 > i1:
                runs.append(("-", " ".join(a[i1:i2])))
            if j2 > j1:
                runs.append(("+", " ".join(b[j1:j2])))
    return runs
