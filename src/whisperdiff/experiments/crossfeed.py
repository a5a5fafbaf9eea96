"""Encoder or decoder? Feed each encoder's output to each decoder: a 2 x 2 table of transcripts.

    reference encoder (openai-whisper) x reference decoder (openai-whisper)  -> the reference transcript
    candidate encoder                  x reference decoder                   -> wrong only if the encoder is
    reference encoder                  x candidate decoder                   -> wrong only if the decoder is
    candidate encoder                  x candidate decoder                   -> the port as a whole

Every cell is openai-whisper's greedy decoding (its filters, its stopping rule) with that decoder computing
the logits (capture/decoder.greedy), so the cells differ only through the two halves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from whisperdiff.capture import make_decoder_runner
from whisperdiff.capture.decoder import encoder_features as run_encoder
from whisperdiff.capture.decoder import greedy
from whisperdiff.capture.faults import get_faults
from whisperdiff.capture.transcript import token_cap, wer
from whisperdiff.inputs.audio import prepare_input
from whisperdiff.inputs.models import LoadedModel, load_model

VERDICTS = {
    "encoder": "the encoder is wrong: its output changes the reference decoder's transcript; the decoder is not",
    "decoder": "the decoder is wrong: it changes the transcript of the reference encoder's output; the encoder is not",
    "both": "both halves are wrong: each changes the transcript on its own",
    "neither": "neither half changes the transcript on its own",
}


@dataclass
class CrossFeed:
    texts: dict[tuple[str, str], str]  # (encoder, decoder) -> transcript; "reference" / "candidate"
    verdict: str
    candidate: dict = field(default_factory=dict)  # what the candidate halves are (impl, injected bugs)

    @property
    def table(self) -> pd.DataFrame:
        """Rows: the encoder; columns: the decoder; cells: the transcript."""
        sides = ("reference", "candidate")
        return pd.DataFrame(
            [[self.texts[(e, d)] for d in sides] for e in sides],
            index=[f"{s} encoder" for s in sides],
            columns=[f"{s} decoder" for s in sides],
        )

    def wer(self) -> dict[tuple[str, str], float]:
        ref = self.texts[("reference", "reference")]
        return {k: wer(ref, t) for k, t in self.texts.items()}

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "explanation": VERDICTS[self.verdict],
            "candidate": self.candidate,
            "transcripts": [
                {"encoder": e, "decoder": d, "text": t, "wer": self.wer()[(e, d)]} for (e, d), t in self.texts.items()
            ],
        }


def verdict(texts: dict[tuple[str, str], str]) -> str:
    ref = texts[("reference", "reference")]
    encoder_wrong = texts[("candidate", "reference")] != ref
    decoder_wrong = texts[("reference", "candidate")] != ref
    return {(True, False): "encoder", (False, True): "decoder", (True, True): "both"}.get(
        (encoder_wrong, decoder_wrong), "neither"
    )


def crossfeed(
    model=None,
    *,
    audio=None,
    encoder: str = "max",
    decoder: str = "max",
    encoder_inject=None,
    decoder_inject=None,
    decoder_runner=None,
    encoder_features=None,
) -> CrossFeed:
    """The 2 x 2 table for one input window. encoder / decoder: the candidate halves' implementations;
    *_inject: porting bugs planted in them. decoder_runner: a candidate decoder runner already built (its
    faults are switched to decoder_inject). encoder_features: {"reference": array, "candidate": array} to
    use instead of running the encoders."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    enc_faults, dec_faults = get_faults(encoder_inject), get_faults(decoder_inject, part="decoder")
    if encoder_features is None:
        mel = prepare_input(loaded.dims.n_mels, audio=audio).mel
        encoder_features = {
            "reference": run_encoder(loaded, mel, "torch"),
            "candidate": run_encoder(loaded, mel, encoder, enc_faults),
        }
    if decoder_runner is None:
        decoder_runner = make_decoder_runner(decoder, loaded, faults=dec_faults)
    elif hasattr(decoder_runner, "set_faults"):
        decoder_runner.set_faults(dec_faults)
    decoders = {"reference": make_decoder_runner("torch", loaded), "candidate": decoder_runner}
    texts = {("reference", "reference"): greedy(decoders["reference"], loaded, encoder_features["reference"])[0]}
    cap = token_cap(texts[("reference", "reference")])
    for e in ("reference", "candidate"):
        for d in ("reference", "candidate"):
            if (e, d) not in texts:
                texts[(e, d)] = greedy(decoders[d], loaded, encoder_features[e], max_tokens=cap)[0]
    candidate = {
        "encoder": encoder,
        "encoder_injected": [f.name for f in enc_faults],
        "decoder": decoder,
        "decoder_injected": [f.name for f in dec_faults],
    }
    return CrossFeed(texts, verdict(texts), candidate)
