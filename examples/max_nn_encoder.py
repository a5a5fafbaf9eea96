"""A Whisper encoder written with max.nn layers the way a user would (Conv1D, Linear, LayerNorm),
traced by whisperdiff without a single change to it, then compared with openai-whisper.

    python examples/max_nn_encoder.py                  # -> traces/maxnn-tiny.en-speech
    python examples/max_nn_encoder.py --bug ln-eps     # the port's layer norms use eps=1e-3
    whisperdiff compare traces/torch-tiny.en-speech traces/maxnn-tiny.en-speech+ln-eps

Everything above `# --- whisperdiff ---` is "the user's code"; below it, whisperdiff.capture.instrument
turns the submodule outputs into graph outputs and whisperdiff.Tracer writes the trace.
"""

from __future__ import annotations

import argparse

import numpy as np
from max import engine, nn
from max.driver import CPU
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, TensorValue, Weight, ops


class Attention(nn.Module):
    def __init__(self, d: int, n_head: int, device: DeviceRef):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(d, d, DType.float32, device, has_bias=True)
        self.key = nn.Linear(d, d, DType.float32, device, has_bias=False)
        self.value = nn.Linear(d, d, DType.float32, device, has_bias=True)
        self.out = nn.Linear(d, d, DType.float32, device, has_bias=True)

    def __call__(self, x: TensorValue) -> TensorValue:
        b, t, d = x.shape
        h = self.n_head
        scale = (int(d) // h) ** -0.25
        q = ops.permute(ops.reshape(self.query(x), [b, t, h, int(d) // h]), [0, 2, 1, 3]) * scale
        k = ops.permute(ops.reshape(self.key(x), [b, t, h, int(d) // h]), [0, 2, 3, 1]) * scale
        v = ops.permute(ops.reshape(self.value(x), [b, t, h, int(d) // h]), [0, 2, 1, 3])
        wv = ops.reshape(ops.permute(ops.softmax(q @ k) @ v, [0, 2, 1, 3]), [b, t, d])
        return self.out(wv)


class MLP(nn.Module):
    def __init__(self, d: int, device: DeviceRef):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d, DType.float32, device, has_bias=True)
        self.fc2 = nn.Linear(4 * d, d, DType.float32, device, has_bias=True)

    def __call__(self, x: TensorValue) -> TensorValue:
        return self.fc2(ops.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, device: DeviceRef, eps: float):
        super().__init__()
        self.attn_ln = nn.LayerNorm(d, [device], DType.float32, eps=eps)
        self.attn = Attention(d, n_head, device)
        self.mlp_ln = nn.LayerNorm(d, [device], DType.float32, eps=eps)
        self.mlp = MLP(d, device)

    def __call__(self, x: TensorValue) -> TensorValue:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class Encoder(nn.Module):
    """Input [1, n_mels, 3000] as Whisper's; convolutions time-major (MAX's Conv1D layout)."""

    def __init__(
        self, n_mels: int, n_ctx: int, d: int, n_head: int, n_layer: int, device: DeviceRef, eps: float = 1e-5
    ):
        super().__init__()
        self.conv1 = nn.Conv1D(3, n_mels, d, DType.float32, padding=1, has_bias=True, device=device)
        self.conv2 = nn.Conv1D(3, d, d, DType.float32, stride=2, padding=1, has_bias=True, device=device)
        self.positional_embedding = Weight("positional_embedding", DType.float32, [n_ctx, d], device)
        self.blocks = nn.LayerList([Block(d, n_head, device, eps) for _ in range(n_layer)])
        self.ln_post = nn.LayerNorm(d, [device], DType.float32)

    def __call__(self, mel: TensorValue) -> TensorValue:
        x = ops.gelu(self.conv1(ops.permute(mel, [0, 2, 1])))
        x = ops.gelu(self.conv2(x))
        x = x + self.positional_embedding
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def whisper_weights(state_dict) -> dict[str, np.ndarray]:
    """openai-whisper's encoder weights under this module's names (conv filters as [k, in, out])."""
    out = {}
    for name, tensor in state_dict.items():
        if not name.startswith("encoder."):
            continue
        name, value = name.removeprefix("encoder."), tensor.float().numpy()
        name = name.replace("mlp.0.", "mlp.fc1.").replace("mlp.2.", "mlp.fc2.")
        if name in ("conv1.weight", "conv2.weight"):
            value = value.transpose(2, 1, 0)
        out[name] = np.ascontiguousarray(value)
    return out


# --- whisperdiff ---------------------------------------------------------------------------------
# Module paths of this encoder -> canonical op names. `*` is one path segment; first match wins.
NAMES = {
    "conv1": "conv1",
    "conv2": "conv2",
    "blocks.*.attn_ln": "blocks.*.attn_ln",
    "blocks.*.attn.query": "blocks.*.attn.q",
    "blocks.*.attn.key": "blocks.*.attn.k",
    "blocks.*.attn.value": "blocks.*.attn.v",
    "blocks.*.attn.out": "blocks.*.attn.out",
    "blocks.*.mlp_ln": "blocks.*.mlp_ln",
    "blocks.*.mlp.fc1": "blocks.*.mlp.fc1",
    "blocks.*.mlp.fc2": "blocks.*.mlp.fc2",
    "blocks.*": "blocks.*.out",
    "ln_post": "ln_post",
}


BUGS = ("ln-eps", "key-from-query")


def built(model, bug: str | None = None):
    """The encoder at the model's dims holding its weights, with `bug` planted, and its input type. bug: "ln-eps"
    (the layer norms' eps 1e-3: another graph) or "key-from-query" (block 1's key projection loaded with its
    query weight: the same graph, other weights)."""
    d = model.dims
    device = DeviceRef.CPU()
    eps = 1e-3 if bug == "ln-eps" else 1e-5
    encoder = Encoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer, device, eps)
    weights = whisper_weights(model.state_dict)
    if bug == "key-from-query":
        weights["blocks.1.attn.key.weight"] = weights["blocks.1.attn.query.weight"]
    encoder.load_state_dict(weights)
    return encoder, TensorType(DType.float32, [1, d.n_mels, 2 * d.n_audio_ctx], device=device)


def trace(model, out: str, bug: str | None = None) -> str:
    import whisperdiff as wd

    encoder, mel_type = built(model, bug)
    with Graph("maxnn_whisper_encoder", input_types=[mel_type]) as graph, wd.instrument(encoder, NAMES) as taps:
        graph.output(encoder(graph.inputs[0].tensor), *taps.outputs)
    compiled = engine.InferenceSession(devices=[CPU()]).load(graph, weights_registry=encoder.state_dict())
    with wd.Tracer(out, impl="max.nn example", model=model, info={"bug": bug}) as t:
        results = compiled.execute(t.mel)
        for name, value in taps.named(results[1:]).items():
            t.record(name, value)
    return out


def captured(model, select="canonical", bug: str | None = None, session=None):
    """The port built under wd.mark_all(select=...) (no names given) and compiled: (cap, execute), as
    trace_captured and bisect_port take them."""
    import whisperdiff as wd

    encoder, mel_type = built(model, bug)
    with (
        Graph("maxnn_port", input_types=[mel_type]) as graph,
        wd.mark_all(encoder, select=select, dims=model.dims) as cap,
    ):
        graph.output(encoder(graph.inputs[0].tensor))
    session = session or engine.InferenceSession(devices=[CPU()])
    compiled = session.load(graph, weights_registry=encoder.state_dict())
    return cap, lambda mel: compiled.execute(np.ascontiguousarray(mel, np.float32))


def main() -> None:
    import whisperdiff as wd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="whisperdiff model spec (default: the embedded tiny.en)")
    parser.add_argument("--bug", choices=BUGS, default=None, help="plant a porting bug in the port")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = wd.load_model(args.model)
    out = args.out or f"traces/maxnn-{model.model_id}-speech" + (f"+{args.bug}" if args.bug else "")
    print(f"wrote {trace(model, out, args.bug)}")


if __name__ == "__main__":
    main()
