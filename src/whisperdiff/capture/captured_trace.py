"""Trace a captured port: run it once with every captured value as an output, let automap say which value is
which canonical op, and write the trace. The port's own output is always bound as the final op (never the
intermediate value that happens to agree with the reference); a port class that runs its own compiled
model is traced through the executions it makes (`_executions`).

`capture/graph_capture.py` (MAX graphs) and `capture/torch_capture.py` (torch modules) record the values;
this module is what turns one run of them into a trace.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

from whisperdiff.capture.captured import to_numpy
from whisperdiff.capture.graph_capture import ChosenOnly
from whisperdiff.errors import WhisperdiffError
from whisperdiff.names import ENCODER_OUTPUT


def trace_captured(
    out,
    cap,
    execute,
    *,
    model,
    impl: str,
    reference=None,
    saved: dict | None = None,
    map_path=None,
    info: dict | None = None,
    weights: dict | None = None,
    untapped=None,
    ops: list[str] | None = None,
):
    """Run the captured port on the Tracer's mel, line the captured values up with the canonical ops
    (automap) and write them as a trace. execute(mel) -> the port's results. Returns the AutoMap.

    The port's own output (what its graph returns, or its forward) is always the final canonical op,
    ln_post, whatever intermediate value agrees with the reference: a port that scales its output after
    the last layer norm must not read as clean. Where automap aligned ln_post to another value, the
    manifest says which, and lists the ops between it and the output (compare reports them).

    cap: a MAX capture (mark_all while the graph was built: its outputs are the port's own first) or a
    torch capture (capture/torch_capture.py: execute runs inside it). reference: a trace (or its path, or {op: array})
    whose values decide which value is which op; saved: the [ops] of a saved map, used first. map_path:
    where to write the map (with `weights`, a [weights] section). untapped(mel) -> the same graph's own
    output built without the extra outputs: how far the tapped graph's own output is from it (extra
    outputs can change what the compiler fuses) goes in the manifest. ops: the canonical ops to align (a
    bisection step's), else every one."""
    from whisperdiff.capture.tracer import Tracer
    from whisperdiff.mapping.automap import automap
    from whisperdiff.store.trace import load_trace

    if isinstance(reference, str | os.PathLike):  # a trace's path, read (verified) like any other trace
        reference = load_trace(reference)

    with Tracer(out, impl=impl, model=model, info=info) as t:
        own, own_key, values = _run_port(cap, execute, t.mel)
        if own is None and ENCODER_OUTPUT in (ops or [ENCODER_OUTPUT]):
            raise WhisperdiffError(
                f"{ENCODER_OUTPUT} is the port's own output, and this graph leaves it out (ChosenOnly): "
                "select it with a plain list, so that the port's output comes first"
            )
        if untapped is not None and own is not None:
            plain = np.asarray(untapped(t.mel), np.float64)
            t._writer.manifest["runner"]["observer_effect"] = {
                "output": "the graph's own first output, tapped vs untapped",
                "max_abs": float(np.abs(own - plain).max()),
                "rel_l2": float(np.linalg.norm(own - plain) / max(np.linalg.norm(plain), 1e-30)),
            }
        amap = automap(cap.values, values, reference=reference, dims=t.model.dims, saved=saved, ops=ops)
        output = _bind_output(amap, cap, own, own_key, values, t.model.dims) if own is not None else None
        for name, value in amap.canonical_values(values).items():
            t.record(name, value)
        t._writer.manifest["runner"]["capture"] = {
            "captured": len(cap.values),
            "outputs": len(values),
            "summary": amap.summary(),
            "unmatched": amap.unmatched,
            "low_confidence": {m.name: f"{m.basis} {m.confidence:.2f}" for m in amap.matches if m.confidence < 0.9},
            "notes": amap.notes,
            "output": output,
            "train_mode": cap.train_mode() if hasattr(cap, "train_mode") else [],
        }
    if map_path is not None:
        amap.write(map_path, weights)
    return amap


def _run_port(cap, execute, mel) -> tuple[np.ndarray, str | None, dict[str, np.ndarray]]:
    """(the port's own output, its captured key, {key: captured value}) of one run on `mel`."""
    if hasattr(cap, "run"):  # a torch capture records while the port runs
        result = cap.run(execute, mel)
        return cap.output(result), cap.output_key, cap.named()
    chosen = getattr(cap, "chosen", None) or []
    with _executions() as seen:  # a port that runs its own compiled model may return its output only
        returned = execute(mel)
    results = list(returned) if isinstance(returned, list | tuple) else None
    if results is None or len(results) < len(chosen):
        full = next((r for r in reversed(seen) if len(r) > len(chosen)), None)
        if full is None:
            raise WhisperdiffError(
                f"the port returned {type(returned).__name__} and ran no compiled model with the {len(chosen)} chosen "
                "values among its outputs: compile the graph mark_all built, and return what it executes"
            )
        own = returned if results is None else results[0]  # what the port itself returns is its output
        return (
            np.asarray(to_numpy(own), np.float32),
            cap.output_keys[0] if cap.output_keys else None,
            cap.named(full if cap._select is not None else full[len(full) - len(chosen) :]),
        )
    if isinstance(cap._select, ChosenOnly):  # the graph returns the chosen values alone (a bisection step)
        return None, None, cap.named(results)
    n_own = cap.n_outputs if cap.n_outputs is not None else len(results) - len(chosen)
    if n_own < 1 or not cap.output_keys:
        raise WhisperdiffError(
            "whisperdiff compares the port's own output, and this graph returns only the chosen values: "
            "build it with mark_all(..., select=...) and graph.output(<your encoder's output>)"
        )
    values = cap.named(results if cap._select is not None else results[n_own:])
    return np.asarray(to_numpy(results[0]), np.float32), cap.output_keys[0], values


@contextmanager
def _executions():
    """Every compiled MAX model's results while the block runs (max.engine.Model.execute and calls)."""
    from max.engine import Model

    seen: list[list] = []
    execute, call = Model.execute, Model.__call__

    def recording_execute(self, *args, **kwargs):
        results = execute(self, *args, **kwargs)
        seen.append(list(results))
        return results

    def recording_call(self, *args, **kwargs):
        results = call(self, *args, **kwargs)
        seen.append(list(results) if isinstance(results, list | tuple) else [results])
        return results

    Model.execute, Model.__call__ = recording_execute, recording_call
    try:
        yield seen
    finally:
        Model.execute, Model.__call__ = execute, call


def _bind_output(amap, cap, own: np.ndarray, own_key: str | None, values: dict, dims) -> dict:
    """Make the port's own output the final canonical op in `amap` (in place); what that changed."""
    from whisperdiff.mapping.align import layout_view
    from whisperdiff.mapping.automap import OpMatch
    from whisperdiff.names import op_specs

    final = [s for s in op_specs(dims) if not s.optional][-1]
    fit = layout_view(final.shape, own.shape)
    if fit is None:
        raise WhisperdiffError(
            f"the port's own output has shape {list(own.shape)}, but the encoder's output {final.name} is "
            f"{list(final.shape)}: return the encoder's output first from the graph (or the forward)"
        )
    key = own_key or "<port output>"
    values[key] = own
    aligned = amap.by_name.get(final.name)
    where = next((c.where for c in cap.values if c.key == own_key), "")
    match = OpMatch(final.name, key, tuple(own.shape), fit[1], "output", 1.0, None, where)
    amap.matches = [m for m in amap.matches if m.name != final.name] + [match]
    amap.unmatched = [n for n in amap.unmatched if n != final.name]
    amap.views[final.name] = fit[0]
    record = {"op": final.name, "key": key, "aligned_key": aligned.key if aligned else None, "after": []}
    if aligned is not None and aligned.key != key:
        index = {c.key: c.index for c in cap.values}
        lo, hi = index.get(aligned.key, -1), index.get(own_key, len(cap.values))
        record["after"] = [
            {"key": c.key, "op": c.op, "where": c.where}
            for c in cap.values
            if lo < c.index <= hi and not c.weight_only  # (not the constants it multiplies by)
        ][:20]
        if aligned.key in values:
            a = np.asarray(amap.views[final.name](np.asarray(values[aligned.key])), np.float64)
            b = np.asarray(fit[0](own), np.float64)
            record["rel_l2_output_vs_aligned"] = float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30))
    return record
