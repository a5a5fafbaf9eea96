"""A MAX Graph decoder port that names nothing (capture/plugin.py's decoder interface): a class that builds a
decoder graph, compiles it and executes it itself, with its KV caches as graph inputs and outputs (one graph for
every step, its lengths symbolic). The graph is whisperdiff's own decoder (capture/max_decoder.py) built with no
taps, so whatever whisperdiff knows of its inside it has to capture hands-off (--mark-all). Its porting bugs are
that graph's run-time switches, one factory each, so every variant runs the same compiled graph:

    whisperdiff trace-decoder --impl tests/plugins/max_decoder.py:no_causal_mask --mark-all --tokens-from REF -o OUT
"""

from __future__ import annotations

import numpy as np


class MaxDecoderPort:
    def __init__(self, model, bug: str | None = None):
        from max import engine
        from max.driver import CPU

        from whisperdiff.capture.max_decoder import DecoderControls, build_decoder_graph, decoder_weights

        self.dims = model.dims
        graph, _ = build_decoder_graph(model.dims, [])
        self.model = engine.InferenceSession(devices=[CPU()]).load(graph, weights_registry=decoder_weights(model))
        controls = DecoderControls(model.dims.n_text_layer)
        if bug:
            setattr(controls, bug, 1.0)
        self.controls = controls.arrays()

    def start(self, features):
        d = self.dims
        self.xa = np.ascontiguousarray(features, np.float32)
        self.k = self.v = np.zeros((d.n_text_layer, 1, 0, d.n_text_state), np.float32)
        self.cross_k = self.cross_v = self.k

    def step(self, tokens, record=None):
        inputs = [np.ascontiguousarray(tokens, np.int64), self.xa, self.k, self.v, self.cross_k, self.cross_v]
        logits, self.k, self.v, self.cross_k, self.cross_v = self.model.execute(*inputs, *self.controls)
        self.k, self.v, self.cross_k, self.cross_v = (
            b.to_numpy() for b in (self.k, self.v, self.cross_k, self.cross_v)
        )
        self.xa = self.xa[:, :0]  # the cross cache holds the encoder's K/V now
        return logits.to_numpy()


def make(model, device="cpu", dtype="float32"):
    return MaxDecoderPort(model)


def kv_off_by_one(model, device="cpu", dtype="float32"):
    """A cached step does not see the cache's newest entry."""
    return MaxDecoderPort(model, "kv_off_by_one")


def pos_restart(model, device="cpu", dtype="float32"):
    """Positions count from 0 at every step."""
    return MaxDecoderPort(model, "pos_restart")


def no_causal_mask(model, device="cpu", dtype="float32"):
    """Self-attention sees later positions."""
    return MaxDecoderPort(model, "no_causal_mask")
