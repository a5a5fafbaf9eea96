"""Which captured value is which canonical op, decided by whisperdiff, with how sure it is.

    amap = automap(cap.values, values, reference=torch_trace, dims=model.dims)   # values: {key: array}
    amap.write("my-port.map.toml")          # [ops] of the one map file (maps.py): read it, edit it, reuse it
    amap = automap(..., saved=read_map("my-port.map.toml"))    # a now-broken port still aligns; misfits are said

Each canonical op (in encoder order) is looked for among the captured values made after the previous
op's match (q, k and v in any order), whose shape is the op's under a known layout ([B,T,C] for
[B,C,T], heads split: align.layout_view). Three kinds of evidence, strongest first:
- a saved map names the value;
- value agreement: the value, viewed in the canonical layout, equals the reference's op (rel L2);
  among values that agree equally (a projection and its reshape into heads) the one at a module's
  boundary (a module's output, or what a module is called with) is the op;
- structure, where values do not agree (a bug, or no reference): the value that block i's op had in
  an earlier block (same key, block index replaced), else the first value after the previous op that
  the op's kind could be (a layer norm, a gelu, an add with a weight for the positional add...) and,
  where the capture has its dataflow, that is computed from the op's input (a few ops back: not the
  next block's gelu when the port wrote its own) and, for a projection, has a matrix weight at its
  core with its bias already added (not a layer norm's beta, not the product before the bias).
The confidence says which one decided. Canonical ops nothing fits are listed as unmatched.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace

import numpy as np

from whisperdiff.mapping.align import layout_view, pick_view
from whisperdiff.mapping.dataflow import (
    BRANCH,
    confirm_by_dataflow,
    core_op,
    descends,
    input_of,
    split_name,
    through_layout,
)
from whisperdiff.mapping.maps import expand, generalise, write_map
from whisperdiff.measure.metrics import rel_l2
from whisperdiff.names import op_specs

AGREE = 1e-3  # rel L2 under which a value is taken to be the reference's op (float32 ports: ~1e-6)
WINDOW = 60  # candidates looked at after the previous op's match
# How far back, in ops, structure looks for an op's input among the sources of a value it could take. What a
# canonical op reads is at most ~5 ops back (a layer norm decomposed into mean, sub, mul...); the same op
# of the next block is 9 or more (a norm, an attention, two residual adds between).
SOURCE_DEPTH = 6


@dataclass
class OpMatch:
    name: str  # canonical op
    key: str  # the captured value's key
    shape: tuple
    layout: str | None  # how it was viewed in the canonical layout
    basis: str  # "map", "value", "pattern", "structure"
    confidence: float
    rel_l2: float | None = None
    where: str = ""


@dataclass
class AutoMap:
    matches: list[OpMatch]
    unmatched: list[str]
    n_captured: int
    views: dict = field(default_factory=dict, repr=False)  # name -> function viewing the value canonically
    notes: list[str] = field(default_factory=list)  # where structure overrode or filled a match (dataflow.py)
    graph: dict = field(default_factory=dict)  # the capture it was made from: values, fingerprint

    @property
    def by_name(self) -> dict[str, OpMatch]:
        return {m.name: m for m in self.matches}

    def rules(self) -> dict[str, str]:
        return generalise({m.name: m.key for m in self.matches}, _block)

    def write(self, path, weights: dict | None = None):
        notes = {
            f"ops.{m.name}": f"{m.basis}, confidence {m.confidence:.2f}"
            for m in self.matches
            if m.basis != "value" and "*" not in m.name
        }
        sections = {"ops": self.rules(), **({"weights": weights} if weights else {}), "graph": self.graph}
        return write_map(path, sections, notes)

    def canonical_values(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{canonical op: the captured value in the canonical layout}, in encoder order."""
        return {m.name: np.ascontiguousarray(self.views[m.name](np.asarray(values[m.key]))) for m in self.matches}

    def lines(self) -> list[str]:
        out = [
            f"{m.name:24s} <- {m.key}  {list(m.shape)}{' (' + m.layout + ')' if m.layout else ''}  "
            f"{m.basis} {m.confidence:.2f}" + (f"  rel L2 {m.rel_l2:.1e}" if m.rel_l2 is not None else "")
            for m in self.matches
        ]
        if self.unmatched:
            out.append(f"not aligned ({len(self.unmatched)}): {', '.join(self.unmatched)}")
        return out + [f"note: {n}" for n in self.notes]

    def summary(self) -> str:
        total = len(self.matches) + len(self.unmatched)
        bases = {}
        for m in self.matches:
            bases[m.basis] = bases.get(m.basis, 0) + 1
        how = ", ".join(f"{n} by {b}" for b, n in bases.items())
        return (
            f"aligned {len(self.matches)}/{total} canonical ops from {self.n_captured} captured values ({how}); "
            "mel is the input fed"
        )


def _block(name: str) -> int | None:
    m = re.match(r"(?:decoder\.)?blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _module_block(path: str) -> int | None:
    """The block a module path names (`layers.1.self_attn`, `enc.stages.1.ff`: 1): its first number segment."""
    return next((int(s) for s in (path or "").split(".") if s.isdigit()), None)


_PROJECTIONS = {"attn.q", "attn.k", "attn.v", "attn.out", "mlp.fc1", "mlp.fc2"}
_PROJECTIONS |= {"cross_" + p for p in _PROJECTIONS if p.startswith("attn.")}
# Cross-attention's K and V come from the encoder output, not the stream: a port may compute them before
# the block (every layer's at once, or in an earlier step), so they are looked for from the capture's start.
_FROM_INPUT = {"cross_attn.k", "cross_attn.v"}


def _kind_fits(op: str, c) -> bool:
    """Could captured value `c` be canonical op `op` by what made it? (structure-only evidence)"""
    suffix = split_name(op)[1]
    key = c.key.lower()
    if suffix in ("conv1", "conv2"):
        return c.op == "conv" or ("conv" in key and bool(c.outputs_of))
    if suffix.endswith("gelu"):
        return "gelu" in c.op
    if suffix == "pos_embed":  # the decoder's positions may be a lookup too (an activation, not a weight)
        return c.op == "add" and (c.from_weight or op.startswith("decoder."))
    if suffix == "tok_embed":  # a lookup of the token ids in the embedding table
        return c.from_weight and not c.operands and any(w in c.op for w in ("embed", "gather", "index", "take"))
    if suffix in ("attn_ln", "cross_attn_ln", "mlp_ln", "ln_post", "ln"):
        return "norm" in c.op or any("norm" in p or "ln" in p.rsplit(".", 1)[-1] for p in c.outputs_of)
    if suffix in _PROJECTIONS:
        return bool(c.outputs_of) or c.op in ("matmul", "add", "linear") and c.from_weight
    if suffix.endswith("attn.weights"):
        return "softmax" in c.op
    if suffix.endswith("attn.wv"):
        return c.op in ("reshape", "transpose", "permute") and bool(c.inputs_of)
    if suffix in ("attn_residual", "cross_attn_residual", "out"):
        return c.op == "add" and not c.from_weight
    return True


def _read(name: str, matches: list) -> OpMatch | None:
    """The match of the canonical op `name` reads (dataflow.input_of), if made."""
    wanted = input_of(name)
    return next((m for m in matches if m.name == wanted), None) if wanted else None


def _boundary(c) -> bool:
    return bool(c.outputs_of or c.inputs_of)


def fingerprint(captured) -> dict:
    """What identifies a capture's graph: how many values, and a digest of its ops and shapes in order."""
    text = "\n".join(f"{c.op}:{list(c.shape)}" for c in captured)
    return {"values": len(captured), "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16]}


def automap(
    captured,
    values: dict[str, np.ndarray] | None = None,
    *,
    reference=None,
    dims=None,
    saved: dict | None = None,
    ops: list[str] | None = None,
    specs: list | None = None,
) -> AutoMap:
    """Align captured values (Captured, in graph order) to canonical ops (module docstring).

    values: the captured values' numbers by key (None: shapes and structure only). reference: a Trace or
    {op: array} with the canonical values. dims: the model's dims (default: the reference's). saved: the
    [ops] of a saved map, or the whole read_map() result (then its [graph] is checked against this
    capture too). Entries of a saved map that do not fit this capture are said in `notes`. specs: the
    canonical ops to look for, in order (OpSpecs; default: the encoder's, names.op_specs): a decoder step's
    (capture/decoder_capture.py) are shaped for the positions that step computes."""
    saved_graph = None
    if isinstance(saved, dict) and isinstance(saved.get("ops"), dict):
        saved, saved_graph = saved["ops"], saved.get("graph") or None
    if dims is None and specs is None:
        dims = reference.model_dims if hasattr(reference, "model_dims") else None
        if dims is None:
            raise ValueError("automap needs the model dims (or a reference trace that has them)")
    if specs is None:
        specs = [s for s in op_specs(dims) if s.name != "mel" and not s.optional]
    specs = [s for s in specs if ops is None or s.name in ops]
    cands = []
    for c in captured:
        if not c.dtype.startswith(("float", "bfloat")) or c.op.startswith("constant") or c.weight_only:
            continue
        if values is not None:  # the shape it ran with (a symbolic batch axis is now a number)
            if c.key not in values:
                continue
            c = replace(c, shape=tuple(np.shape(values[c.key])))
        if c.static:
            cands.append(c)
    by_key = {c.key: c for c in cands}
    saved_keys = expand(saved or {}, [s.name for s in specs])
    matches, unmatched, views, anchor, used = [], [], {}, -1, set()
    map_misses: list[str] = []
    qkv_anchor = None

    def ref_value(name):
        if reference is None:
            return None
        return np.asarray(reference[name]) if name in reference else None  # an op it lacks: structure only

    by_index = {c.index: c for c in captured} if any(c.operands for c in captured) else None

    biased = (
        {i for c in captured if c.weight_rank == 1 and len(c.operands) == 1 and "norm" not in c.op for i in c.operands}
        if by_index
        else set()
    )

    def _projects(c) -> bool:
        """Is c a projection's output by the dataflow: a matrix weight at its core (through bias adds and
        layouts: not a layer norm's beta add), and no bias added to it next (then the sum is the output)."""
        if by_index is None or c.outputs_of:
            return True  # no dataflow, or a module's output: the kind test decides
        core = core_op(c, by_index)
        return core is not None and core.weight_rank >= 2 and c.index not in biased

    def _adds_branch(c, read: OpMatch | None) -> bool:
        """A residual add takes the branch it closes as an operand (through layouts and casts), and its other
        operand, the stream, was there before the branch: where a port drops a residual, the next add (the
        MLP's output added to the branch) is not this one."""
        source = by_key.get(read.key) if read is not None else None
        if by_index is None or source is None or c.op != "add":
            return True
        branch = [  # (by index: the candidate is a copy with the shape it ran with)
            i
            for i in c.operands
            if i in by_index and source.index in {x.index for x in through_layout(by_index[i], by_index)}
        ]
        return bool(branch) and all(i < source.index for i in c.operands if i not in branch)

    def _computed_from(c, read: OpMatch | None) -> bool:
        """Structure alone takes no value the op's input is not among the sources of (within a block's
        depth of ops): the first gelu after fc1 is the next block's, where a port wrote its own activation."""
        source = by_key.get(read.key) if read is not None else None
        return by_index is None or source is None or descends(c, source, by_index, depth=SOURCE_DEPTH)

    for spec in specs:
        suffix = split_name(spec.name)[1]
        start = anchor
        if suffix in ("attn.q", "attn.k", "attn.v"):
            qkv_anchor = anchor if suffix == "attn.q" or qkv_anchor is None else qkv_anchor
            start = qkv_anchor
        elif suffix in _FROM_INPUT:
            start = -1
        block = _block(spec.name)
        pool = [
            c
            for c in cands
            if c.index > start
            and c.key not in used
            and layout_view(spec.shape, c.shape) is not None
            and (block is None or _module_block(c.module) in (None, block))  # not inside another block's module
        ][:WINDOW]
        match = None
        key = saved_keys.get(spec.name)
        if key is not None and key in by_key and layout_view(spec.shape, by_key[key].shape) is not None:
            match = (by_key[key], "map", 1.0, None)
        elif key is not None:  # the map no longer fits this graph here: said, and aligned otherwise
            why = "names no value of this capture" if key not in by_key else f"has shape {list(by_key[key].shape)}"
            map_misses.append(f"map: {spec.name} = {key!r} {why}; aligned without the map")
        ref = ref_value(spec.name) if match is None and values is not None else None
        if match is None and ref is not None and pool:
            scored = []
            for c in pool:
                try:  # under the layout closest to the reference (of two, where the shape cannot say)
                    view = pick_view(spec.shape, c, ref, values)[0]
                    scored.append((rel_l2(ref, view(np.asarray(values[c.key]))), c))
                except ValueError:
                    continue
            if scored:
                best = min(r for r, _ in scored)
                if best < AGREE:
                    tied = [c for r, c in scored if r <= max(best * 4, 1e-5)]
                    c = next((c for c in tied if _boundary(c)), tied[0])
                    r = next(r for r, cc in scored if cc is c)
                    match = (c, "value", 0.99 if r < 1e-4 else 0.9, r)
        if match is None and _block(spec.name) is not None:  # the same op in an earlier block, index replaced
            i = _block(spec.name)
            for m in reversed(matches):
                j = _block(m.name)
                if j is not None and j != i and split_name(m.name)[1] == suffix:
                    guess = _reindex(m.key, j, i)
                    c = by_key.get(guess)
                    if c is not None and c in pool:
                        match = (c, "pattern", 0.8, None)
                    break
        if match is None:
            read = _read(spec.name, matches)
            fits = [
                c
                for c in pool
                if _kind_fits(spec.name, c)
                and _computed_from(c, read)
                and (suffix not in BRANCH or _adds_branch(c, read))
                and not (suffix in _PROJECTIONS and not _projects(c))
            ]
            if fits:
                c = next((c for c in fits[:3] if _boundary(c)), fits[0])
                match = (c, "structure", 0.5, None)
        if match is None:
            unmatched.append(spec.name)
            continue
        c, basis, conf, rel = match
        view, layout = pick_view(spec.shape, c, ref, values)
        if rel is None and ref is not None and values is not None:
            rel = rel_l2(ref, view(np.asarray(values[c.key])))
        views[spec.name] = view
        used.add(c.key)
        matches.append(OpMatch(spec.name, c.key, c.shape, layout, basis, conf, rel, c.where))
        if suffix in ("attn.q", "attn.k", "attn.v"):
            anchor = max(anchor, c.index)
        elif suffix not in _FROM_INPUT:
            anchor = c.index
    amap = AutoMap(matches, unmatched, len(cands), views, graph=fingerprint(captured))
    if saved_graph and saved_graph.get("fingerprint") not in (None, amap.graph["fingerprint"]):
        map_misses.insert(
            0,
            f"map: made from another graph ({saved_graph.get('values')} values, fingerprint "
            f"{saved_graph.get('fingerprint')}; this one {amap.graph['values']}, {amap.graph['fingerprint']}): "
            f"each entry was checked; {len(map_misses)} do not fit",
        )
    known = {c.index: c for c in captured} | {c.index: c for c in cands}  # cands: the shapes they ran with
    amap.notes = map_misses + confirm_by_dataflow(amap, list(known.values()), values, specs, reference)
    return amap


def _reindex(key: str, j: int, i: int) -> str:
    """`layers.0.attention:reshape#3` in block 0 -> the same in block i (the first segment equal to j)."""
    parts = re.split(r"([.:#])", key)
    for n, p in enumerate(parts):
        if p == str(j):
            parts[n] = str(i)
            return "".join(parts)
    return key
