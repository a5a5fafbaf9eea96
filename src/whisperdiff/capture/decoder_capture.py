"""Mark all for a decoder port: trace a torch or MAX decoder you wrote, hands-off, by (op, token position).

    whisperdiff trace-decoder --impl my_decoder.py:make --mark-all --tokens-from traces/dec-torch -o traces/dec-mine

The port is a decoder plugin (capture/plugin.py: start(features), step(tokens) -> logits, with its own KV
cache or none) that names nothing. Each step runs inside a capture: torch_capture.py (every torch op, with its
module path and file:line) for a port that holds a torch module, else graphs_capture.py (every value of each
MAX graph the port builds, compiles and executes itself, from its making on). automap says which captured
value is which canonical decoder op, with specs shaped for the positions that step computes (P = the step's
tokens, P_k = every position so far). The reference, where given (the `--tokens-from` trace, teacher-forced
on the same tokens and the same encoder output), is sliced to the same positions, so value agreement works
step by step; structure decides where values disagree. Cross-attention K and V are aligned at the first step
only (computed once).

What the port returns is always its `decoder.logits`; where that is a captured value, the value it reads is
`decoder.ln` (dataflow). An op a plugin names itself (record) is taken as named. An op aligned at some
steps but not all is left out of the trace and listed as not aligned, with the steps that missed it, so
compare says "not aligned", never "not traced".
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.names import DECODER_INPUT, decoder_op_specs, position_axis

GRAPHS = "its MAX graphs"
LOGITS = "decoder.logits"


def step_specs(dims, start: int, length: int, recomputed: bool = False) -> list:
    """The canonical decoder ops a step computing positions start..start+length-1 makes, shaped for it: P is
    `length`, self-attention keys run to start+length; cross-attention K/V only at the first step. Without
    the decoder's input, its logits (the port's output) and the optional ops. recomputed: a port with no
    KV cache, which computes every position so far at each step (P = start+length)."""
    if recomputed:
        return [s for s in step_specs(dims, 0, start + length) if start == 0 or position_axis(s.layout) is not None]
    specs = []
    for s in decoder_op_specs(dims, length):
        if s.name in (DECODER_INPUT, "decoder.logits") or s.optional:
            continue
        if position_axis(s.layout) is None and start > 0:
            continue  # cross-attention K/V: computed once, at the first step
        if s.name.endswith(".attn.weights") and not s.name.endswith("cross_attn.weights"):
            s = replace(s, shape=(*s.shape[:-1], start + length))
        specs.append(s)
    return specs


def reference_slice(reference, specs, start: int, length: int) -> dict[str, np.ndarray]:
    """The reference's value of each op in `specs` at positions start..start+length-1 (teacher-forced on the
    same tokens): its position axis cut to the step, attention keys to the positions so far."""
    out = {}
    for s in specs:
        if reference is None or s.name not in reference:
            continue
        value = np.asarray(reference[s.name])
        axis = position_axis(s.layout)
        if axis is not None:
            value = np.take(value, np.arange(start, start + length), axis=axis)
        if s.name.endswith(".attn.weights"):
            value = value[..., : s.shape[-1]]
        if tuple(value.shape) == tuple(s.shape):
            out[s.name] = value
    return out


def _torch_module(port):
    """The torch.nn.Module a port computes with: the port itself, or the first module among its attributes."""
    from whisperdiff.capture.torch_capture import is_torch_module

    if is_torch_module(port):
        return port
    return next((v for v in vars(port).values() if is_torch_module(v)), None) if hasattr(port, "__dict__") else None


class CapturedDecoderRunner:
    """A decoder plugin traced hands-off (module docstring): the decoder runner interface (runner.py)."""

    takes_faults = False
    records_what_it_records = True  # the trace holds the ops aligned at every step

    def __init__(self, spec: str, model, *, taps=None, faults=(), device: str = "cpu", reference=None, decoder=None):
        from whisperdiff.capture.graphs_capture import GraphsCapture
        from whisperdiff.capture.plugin import PluginDecoderRunner
        from whisperdiff.capture.torch_capture import TorchCapture

        if faults:
            raise WhisperdiffError("decoder faults are run-time switches of the MAX decoder; a port has its own bugs")
        graphs = GraphsCapture(_weight_shapes(model.dims))
        with graphs:  # a MAX port may build and compile its graphs as it is made
            self.port = PluginDecoderRunner(spec, model, device=device, decoder=decoder)
        self.impl, self.dims = spec, model.dims
        self.taps = set(taps) if taps is not None else None
        module = _torch_module(self.port.decoder)
        if module is not None:
            self.cap, self.kind = TorchCapture(module), type(module).__name__
        else:  # no torch module: the MAX graphs it builds and runs
            self.cap, self.kind = graphs, GRAPHS
        self.reference = reference
        self.position = 0
        self.steps: list[dict] = []  # per step: positions, what was aligned and what was not
        self.dropped: dict[str, list[int]] = {}  # op -> the step starts where it was not aligned

    def facts(self) -> dict:
        return {
            "device": self.port.device,
            "dtype": self.port.dtype,
            "decoder": f"{self.impl} (plugin, captured: mark_all on {self.kind})",
        }

    def start(self, features: np.ndarray) -> None:
        if self.train_mode():
            raise WhisperdiffError(
                f"--impl {self.impl}: the decoder module is in train mode ({', '.join(self.train_mode()[:3])}): "
                "its dropout makes every run different; call .eval() in the factory"
            )
        with self.cap if self.kind == GRAPHS else nullcontext():  # a MAX port may run a graph here (cross K/V)
            self.port.start(features)
        self.position = 0

    def train_mode(self) -> list[str]:
        return self.cap.train_mode() if hasattr(self.cap, "train_mode") else []

    def step(self, tokens: np.ndarray, record=None) -> np.ndarray:
        import torch

        from whisperdiff.mapping.automap import automap

        length = int(np.shape(tokens)[-1])
        named: dict[str, np.ndarray] = {}
        out: list[np.ndarray] = []

        def execute(_):
            out.append(self.port.step(tokens, named.__setitem__))
            return torch.from_numpy(out[0])

        self.cap.run(execute, None)
        logits, values, start = out[0], self.cap.named(), self.position
        if not values and getattr(self.cap, "runs", None) == 0:
            raise WhisperdiffError(
                f"--impl {self.impl} --mark-all: the port holds no torch.nn.Module and ran no MAX graph built while "
                "whisperdiff captured it; build and compile its graphs in the factory or in start()/step() "
                "(not before), or name the ops with record() (capture/plugin.py)"
            )

        # the value the port returned as its logits, where it is a captured one: what decoder.ln feeds (dataflow)
        own = next((k for k, v in values.items() if v.shape == logits.shape and np.array_equal(v, logits)), None)

        def align(recomputed: bool):
            specs = [s for s in step_specs(self.dims, start, length, recomputed) if s.name not in named]
            first = 0 if recomputed else start
            reference = reference_slice(self.reference, specs, first, start + length - first)
            bound = {LOGITS: own} if own is not None and not recomputed else None
            if bound:
                specs.append(next(s for s in decoder_op_specs(self.dims, length) if s.name == LOGITS))
            amap = automap(self.cap.values, values, reference=reference, specs=specs, saved=bound)
            amap.matches = [m for m in amap.matches if m.name != LOGITS]  # (its value is what step returned)
            amap.unmatched = [n for n in amap.unmatched if n != LOGITS]
            return amap, [s for s in specs if s.name != LOGITS]

        amap, specs = align(False)
        recomputed = False
        if start > 0 and len(amap.unmatched) > len(specs) // 4:  # a port without a KV cache recomputes every position
            other, other_specs = align(True)
            if len(other.matches) > len(amap.matches):
                amap, specs, recomputed = other, other_specs, True
        aligned = amap.canonical_values(values)
        if recomputed:  # its value at this step's positions is what a cached step computes
            spec_of = {s.name: s for s in specs}
            aligned = {n: _this_step(v, spec_of[n], start) for n, v in aligned.items()}
        self.steps.append(
            {
                "positions": [self.position, self.position + length - 1],
                "recomputed": recomputed,
                "aligned": len(aligned),
                "named": sorted(n for n in named if n != "decoder.logits"),
                "unmatched": amap.unmatched,
                "low_confidence": {m.name: f"{m.basis} {m.confidence:.2f}" for m in amap.matches if m.confidence < 0.9},
                "notes": amap.notes,
            }
        )
        if record is not None:
            for name, value in {**aligned, **named}.items():
                if self.taps is None or name in self.taps:
                    record(name, value)
        self.position += length
        return logits

    def close(self) -> None:
        self.port.close()

    def drop(self, name: str) -> None:
        """teacher_forced left `name` out: aligned at some steps, not all (those are said)."""
        self.dropped[name] = [s["positions"][0] for s in self.steps if name in s["unmatched"]]

    def capture_record(self) -> dict:
        """The manifest's runner.capture (analysis/port_output.py reads it): what was aligned, what was not."""
        order = [s.name for s in decoder_op_specs(self.dims, 1)]
        unmatched = sorted({n for s in self.steps for n in s["unmatched"]}, key=order.index)
        n_ops = len(step_specs(self.dims, 0, 1))
        notes = [f"{name}: not aligned at the steps at positions {_ranges(w)}" for name, w in self.dropped.items()]
        said: dict[str, list[int]] = {}  # a note made at every step is said once, with the steps
        for s in self.steps:
            for n in s["notes"]:
                said.setdefault(n, []).append(s["positions"][0])
        notes += [f"{n} (steps at positions {_ranges(where)})" for n, where in said.items()]
        return {
            "captured": len(self.cap.values),  # (the last step's)
            "summary": f"aligned {n_ops - len(unmatched)}/{n_ops} canonical decoder ops at every one of "
            f"{len(self.steps)} steps (hands-off: mark_all); decoder.logits is the port's own output",
            "unmatched": unmatched,
            "low_confidence": {k: v for s in self.steps for k, v in s["low_confidence"].items()},
            "notes": notes[:40],
            "steps": [{k: s[k] for k in ("positions", "recomputed", "aligned", "unmatched")} for s in self.steps],
            "train_mode": [],
        }


def _weight_shapes(dims) -> list[tuple]:
    """The shapes of the decoder's checkpoint tensors (a graph input of one of them is a weight fed as input)."""
    c, v = dims.n_text_state, dims.n_vocab
    return [(v, c), (dims.n_text_ctx, c), (c, c), (c,), (4 * c, c), (4 * c,), (3 * c, c), (3 * c,)]


def _ranges(starts: list[int]) -> str:
    """[2, 3, 4, 7] -> "2-4, 7"."""
    runs: list[list[int]] = []
    for n in starts:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _this_step(value: np.ndarray, spec, start: int) -> np.ndarray:
    """A value over positions 0.. (a step of a port without a KV cache) cut to the positions from `start`:
    the rows of its position axis, as a cached step computes them (attention keys stay every position)."""
    axis = position_axis(spec.layout)
    return value if axis is None else np.take(value, np.arange(start, value.shape[axis]), axis=axis)
