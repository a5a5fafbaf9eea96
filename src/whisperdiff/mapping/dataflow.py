"""Structure over agreement: what a canonical op reads decides which value its input is.

Value agreement finds what is right and can hide what is wrong: with one head zeroed between `p @ v` and
the output projection, the value just before the bug agrees with the reference's `attn.wv`, and a
value-first alignment takes it, moving the divergence one op late. The dataflow knows better: `attn.wv`
is what the output projection reads. So after automap, each matched op that reads another canonical op
(CONSUMES) is asked which value it reads, from the capture's dataflow alone (Captured.operands):
- an op with a matrix weight (a projection, a conv, the positional add) or a fused norm reads the one
  activation operand of that core op, found down through bias adds, gamma products and layout ops;
- a residual add reads, as its branch, the operand a projection made (not the residual stream);
- an activation reads its one operand.
Where the structure says nothing (a decomposed layer norm forks) nothing moves. A producer whose match
is not what its consumer reads is moved to it (basis "dataflow", and a note says what value agreement
had chosen); a producer nothing matched gets it, and when that is the producer's own input, the note
says the op is missing. The port's output and a saved map are left alone.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from whisperdiff.mapping.align import layout_view, pick_view
from whisperdiff.measure.metrics import rel_l2

# canonical op -> the canonical op it reads (in the same block)
CONSUMES = {
    "conv1.gelu": "conv1",
    "conv2": "conv1.gelu",
    "conv2.gelu": "conv2",
    "pos_embed": "conv2.gelu",
    "attn.q": "attn_ln",
    "attn.k": "attn_ln",
    "attn.v": "attn_ln",
    "attn.out": "attn.wv",
    "mlp_ln": "attn_residual",
    "mlp.fc1": "mlp_ln",
    "mlp.gelu": "mlp.fc1",
    "mlp.fc2": "mlp.gelu",
    "attn_residual": "attn.out",
    "out": "mlp.fc2",
}
# A decoder block puts cross-attention between its self-attention and its MLP; its stream starts at the
# token + positional embedding.
DECODER_CONSUMES = CONSUMES | {
    "pos_embed": "tok_embed",
    "cross_attn_ln": "attn_residual",
    "cross_attn.q": "cross_attn_ln",
    "cross_attn.out": "cross_attn.wv",
    "cross_attn_residual": "cross_attn.out",
    "mlp_ln": "cross_attn_residual",
    "logits": "ln",
}
# what a consumer that is a residual add reads from its branch (the other operand is the stream)
BRANCH = {"attn_residual", "cross_attn_residual", "out"}
_LAYOUT = re.compile(r"reshape|transpose|permute|squeeze|view|flatten|cast|broadcast|rebind|contig|to_copy|float|half")
DEPTH = 8


_PREFIX = re.compile(r"((?:decoder\.)?blocks\.\d+\.|decoder\.)(.+)")


def split_name(name: str) -> tuple[str, str]:
    """(prefix, op): "decoder.blocks.0.attn.q" -> ("decoder.blocks.0.", "attn.q"); "blocks.1.out" ->
    ("blocks.1.", "out"); "decoder.pos_embed" -> ("decoder.", "pos_embed"); "conv1" -> ("", "conv1")."""
    m = _PREFIX.match(name)
    return (m.group(1), m.group(2)) if m else ("", name)


def input_of(name: str) -> str | None:
    """The canonical op that canonical op `name` reads, in the same block (CONSUMES, or DECODER_CONSUMES for
    a decoder op); None if it reads none."""
    prefix, suffix = split_name(name)
    table = DECODER_CONSUMES if prefix.startswith("decoder.") else CONSUMES
    return prefix + table[suffix] if suffix in table else None


def stream_input_of(name: str) -> str | None:
    """What a block's first op (its attention's layer norm) reads: the previous block's output, or the
    embedding for the first block; None for any other op (input_of covers those within a block)."""
    prefix, suffix = split_name(name)
    m = re.fullmatch(r"((?:decoder\.)?)blocks\.(\d+)\.", prefix)
    if suffix != "attn_ln" or not m:
        return None
    i = int(m.group(2))
    return f"{m.group(1)}blocks.{i - 1}.out" if i > 0 else f"{m.group(1)}pos_embed"


def _layout(c) -> bool:
    return bool(_LAYOUT.search(c.op)) and c.weight_rank == 0 and len(c.operands) == 1


# float types each of which holds every value of the ones listed for it: a cast into it changes no number
_HOLDS = {"float64": {"float32", "float16", "bfloat16"}, "float32": {"float16", "bfloat16"}}


def _rounds(c, source) -> bool:
    """Does c change the numbers of `source`, the value it casts (float32 to float16, say)? A layout
    op with the same dtype on both sides, or a cast into a type that holds them all, does not."""
    return c.dtype != source.dtype and source.dtype not in _HOLDS.get(c.dtype, ())


def through_layout(c, by_index, rounded: bool = False) -> list:
    """c, then what it views (a reshape of a transpose of ...): the same numbers in other layouts.
    rounded=True: stop at a cast that rounds, as what was cast is other numbers. A residual add reads its
    branch so: a float16 projection's output, rounded and cast back, is that projection's value. An op's
    input is followed through such casts: rounding what an op reads is part of computing it in float16."""
    chain = [c]
    while _layout(chain[-1]) and chain[-1].operands[0] in by_index and len(chain) < DEPTH:
        source = by_index[chain[-1].operands[0]]
        if rounded and _rounds(chain[-1], source):
            break
        chain.append(source)
    return chain


def core_op(c, by_index):
    """Down from c through bias adds, gamma products and layout ops to the op with a matrix weight (a
    projection, a conv, the positional add) or a fused norm; None where the path forks (a decomposed op)."""
    for _ in range(DEPTH):
        if c.weight_rank >= 2 or ("norm" in c.op and c.weight_rank == 1):
            return c
        if (c.weight_rank == 1 or _layout(c)) and len(c.operands) == 1 and c.operands[0] in by_index:
            c = by_index[c.operands[0]]
            continue
        return None
    return None


def descends(c, ancestor, by_index, depth: int = 4) -> bool:
    """Is `ancestor` among the values c is computed from, within `depth` ops?"""
    if ancestor is None:
        return False
    frontier, seen = {c.index}, {c.index}
    for _ in range(depth):
        frontier = {i for x in frontier if x in by_index for i in by_index[x].operands} - seen
        if ancestor.index in frontier:
            return True
        if not frontier:
            return False
        seen |= frontier
    return False


def structural_input(consumer, suffix: str, by_index, stream: frozenset = frozenset()) -> list:
    """The values (one value, in its layouts) that canonical op `consumer` reads as its input, from the
    port's dataflow alone; [] where the structure does not say (a decomposed op, a fork). stream: the
    indices of the residual stream's values (pos_embed, each block's out), never a branch."""
    core = core_op(consumer, by_index)
    if core is not None and len(core.operands) == 1 and core.operands[0] in by_index:
        return through_layout(by_index[core.operands[0]], by_index)
    if suffix in BRANCH and consumer.op == "add" and consumer.weight_rank == 0 and len(consumer.operands) == 2:
        branches = [
            by_index[i]
            for i in consumer.operands
            if i in by_index and i not in stream and core_op(by_index[i], by_index) is not None
        ]
        if len(branches) == 1:  # the operand a projection made; the other is the residual stream
            return through_layout(branches[0], by_index, rounded=True)
        return []
    if suffix.endswith("gelu") and len(consumer.operands) == 1 and consumer.operands[0] in by_index:
        return through_layout(by_index[consumer.operands[0]], by_index)  # an activation: what it is applied to
    return []


def confirm_by_dataflow(amap, captured, values: dict | None, specs, reference=None) -> list[str]:
    """Move or fill producer matches in `amap` (in place) by what their consumers read; returns notes.
    captured: every captured value (the traversal passes through values that are no candidate)."""
    by_index = {c.index: c for c in captured}
    if not any(c.operands for c in captured):
        return []  # a capture without dataflow (an old one): nothing to confirm against
    by_key = {c.key: c for c in captured}
    shape_of = {s.name: tuple(s.shape) for s in specs}
    notes: list[str] = []
    for spec in reversed(specs):  # consumers last-first, so a moved producer is then checked as a consumer
        producer = input_of(spec.name) or stream_input_of(spec.name)
        matches = amap.by_name
        consumer = matches.get(spec.name)
        if producer is None or producer not in shape_of or consumer is None or consumer.key not in by_key:
            continue
        current = matches.get(producer)
        if current is not None and current.basis in ("map", "output"):
            continue
        stream = frozenset(
            by_key[m.key].index
            for m in matches.values()
            if m.key in by_key and split_name(m.name)[1] in ("pos_embed", "out")
        )
        read = structural_input(by_key[consumer.key], split_name(spec.name)[1], by_index, stream)
        if current is not None and any(c.key == current.key for c in read):
            continue  # structure confirms the match
        fits = [
            c
            for c in read
            if layout_view(shape_of[producer], c.shape) is not None and (values is None or c.key in values)
        ]
        missing = False
        before = matches.get(input_of(producer))
        if fits and current is None and before is not None and any(c.key == before.key for c in fits):
            missing = True  # nothing computes the producer: its consumer reads the producer's own input
        if not fits:
            continue
        chosen = fits[0]
        if current is not None and current.basis == "value" and not descends(chosen, by_key.get(current.key), by_index):
            continue  # agreement is only overridden by a value computed from the agreeing one (a bug after it)
        ref = np.asarray(reference[producer]) if reference is not None and producer in reference else None
        view, layout = pick_view(shape_of[producer], chosen, ref, values)
        rel = None
        if ref is not None and values is not None:
            rel = rel_l2(ref, view(np.asarray(values[chosen.key])))
        new = replace(
            consumer,
            name=producer,
            key=chosen.key,
            shape=chosen.shape,
            layout=layout,
            basis="dataflow",
            confidence=0.95,
            rel_l2=rel,
            where=chosen.where,
        )
        if current is None:
            amap.unmatched = [n for n in amap.unmatched if n != producer]
            amap.matches.append(new)
            notes.append(
                f"{producer}: no value of the port computes it: {spec.name} reads {before.key} ({before.name}) "
                f"directly, so {producer} is taken as that value (the op is missing)"
                if missing
                else f"{producer}: aligned by dataflow to {chosen.key}, the value {spec.name} reads"
            )
        else:
            amap.matches = [new if m.name == producer else m for m in amap.matches]
            agreed = f", rel L2 {current.rel_l2:.1e}" if current.rel_l2 is not None else ""
            notes.append(
                f"{producer}: aligned by dataflow to {chosen.key}, the value {spec.name} reads; "
                f"by {current.basis} it was {current.key}{agreed}, which {spec.name} does not read"
            )
        amap.views[producer] = view
    order = {s.name: i for i, s in enumerate(specs)}
    amap.matches.sort(key=lambda m: order.get(m.name, len(order)))
    return notes
