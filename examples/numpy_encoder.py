"""A Whisper encoder in plain NumPy, traced with whisperdiff.Tracer: how any implementation (JAX, ONNX
Runtime, C++ through bindings...) gets into a trace that `whisperdiff compare` and `check` understand.

    python examples/numpy_encoder.py                          # -> traces/numpy-tiny.en-speech
    python examples/numpy_encoder.py --bug no-pos-embed       # a planted porting bug
    whisperdiff compare traces/torch-tiny.en-speech traces/numpy-tiny.en-speech

It is also a whisperdiff plugin (`trace --impl examples/numpy_encoder.py:make`): `make(model, device,
dtype)` returns an object whose `run(mel)` yields (canonical op name, array) pairs.
"""

from __future__ import annotations

import argparse

import numpy as np

BUGS = ("no-pos-embed", "missing-ln-post", "gelu-tanh")


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): NumPy has no erf, and Whisper's GELU is exact."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x, tanh=False):
    if tanh:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def layer_norm(x, w, b, eps=1e-5):
    x64 = x.astype(np.float64)  # statistics in float64, output float32
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    return ((x64 - mean) / np.sqrt(var + eps) * w + b).astype(np.float32)


def conv1d(x, w, b, stride=1):
    """x [C_in, T], w [C_out, C_in, 3], padding 1, as torch's Conv1d."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    t_out = (x.shape[1] + 2 - 3) // stride + 1
    cols = np.stack([xp[:, k : k + stride * t_out : stride] for k in range(3)], axis=1)  # [C_in, 3, T_out]
    return np.einsum("oik,ikt->ot", w, cols, optimize=True) + b[:, None]


class NumpyEncoder:
    """openai-whisper's AudioEncoder, op for op, yielding every canonical op (default taps)."""

    def __init__(self, model, device: str = "cpu", dtype: str = "float32", bug: str | None = None):
        if device not in ("cpu", "auto") or dtype != "float32":
            raise ValueError("the NumPy encoder runs float32 on the CPU only")
        self.w = {
            k.removeprefix("encoder."): v.float().numpy()
            for k, v in model.state_dict.items()
            if k.startswith("encoder.")
        }
        self.n_head, self.n_layer, self.bug = model.dims.n_audio_head, model.dims.n_audio_layer, bug

    def run(self, mel: np.ndarray):
        w, bug = self.w, self.bug
        x = conv1d(mel[0], w["conv1.weight"], w["conv1.bias"])
        yield "conv1", x[None]
        x = gelu(x)
        yield "conv1.gelu", x[None]
        x = conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2)
        yield "conv2", x[None]
        x = gelu(x)
        yield "conv2.gelu", x[None]
        x = x.T + (0 if bug == "no-pos-embed" else w["positional_embedding"])
        yield "pos_embed", x[None]
        for i in range(self.n_layer):
            p = f"blocks.{i}."
            h = layer_norm(x, w[p + "attn_ln.weight"], w[p + "attn_ln.bias"])
            yield p + "attn_ln", h[None]
            q = h @ w[p + "attn.query.weight"].T + w[p + "attn.query.bias"]
            k = h @ w[p + "attn.key.weight"].T
            v = h @ w[p + "attn.value.weight"].T + w[p + "attn.value.bias"]
            yield p + "attn.q", q[None]
            yield p + "attn.k", k[None]
            yield p + "attn.v", v[None]
            t, c = q.shape
            d = c // self.n_head
            qh, kh, vh = (m.reshape(t, self.n_head, d).transpose(1, 0, 2) for m in (q, k, v))
            scores = (qh * d**-0.25) @ (kh * d**-0.25).transpose(0, 2, 1)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            wv = (probs @ vh).transpose(1, 0, 2).reshape(t, c)
            yield p + "attn.wv", wv[None]
            out = wv @ w[p + "attn.out.weight"].T + w[p + "attn.out.bias"]
            yield p + "attn.out", out[None]
            x = x + out
            yield p + "attn_residual", x[None]
            h = layer_norm(x, w[p + "mlp_ln.weight"], w[p + "mlp_ln.bias"])
            yield p + "mlp_ln", h[None]
            h = h @ w[p + "mlp.0.weight"].T + w[p + "mlp.0.bias"]
            yield p + "mlp.fc1", h[None]
            h = gelu(h, tanh=bug == "gelu-tanh")
            yield p + "mlp.gelu", h[None]
            h = h @ w[p + "mlp.2.weight"].T + w[p + "mlp.2.bias"]
            yield p + "mlp.fc2", h[None]
            x = x + h
            yield p + "out", x[None]
        if bug != "missing-ln-post":
            x = layer_norm(x, w["ln_post.weight"], w["ln_post.bias"])
        yield "ln_post", x[None]


def make(model, device: str = "cpu", dtype: str = "float32"):
    """The plugin factory: `whisperdiff trace --impl examples/numpy_encoder.py:make`."""
    return NumpyEncoder(model, device, dtype)


def main() -> None:
    import whisperdiff as wd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="whisperdiff model spec (default: the embedded tiny.en)")
    parser.add_argument("--audio", default=None, help="input clip (default: the shipped one)")
    parser.add_argument("--bug", choices=BUGS, default=None, help="plant a porting bug")
    parser.add_argument("--out", default=None, help="trace directory (default traces/numpy-MODEL-speech[+BUG])")
    args = parser.parse_args()
    model = wd.load_model(args.model)
    out = args.out or f"traces/numpy-{model.model_id}-speech" + (f"+{args.bug}" if args.bug else "")
    encoder = NumpyEncoder(model, bug=args.bug)
    with wd.Tracer(out, impl="numpy", model=model, audio=args.audio, info={"bug": args.bug}) as t:
        for name, value in encoder.run(t.mel.astype(np.float32)):
            t.record(name, value.astype(np.float32))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
