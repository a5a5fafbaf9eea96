"""Which port weight is which reference weight: found by content, or by shape and name when the port has none yet.

    m = propose(port_weights, reference_state_dict)    # port: {name: array} (by value) or {name: shape}
    m.write("my-port.map.toml")                         # [weights] of the one map file (maps.py)
    module.load_state_dict(m.load(reference_state_dict))   # the reference's weights, in the port's names and layouts

By value: a permuted, transposed or reshaped tensor holds the same multiset of numbers, so each
reference tensor is found by the sorted values it holds, and then the layout that reproduces it exactly
is named (as is, transposed, permuted (2, 1, 0), reshaped). A fused q/k/v tensor is three reference
tensors side by side along one axis. By shape (a port that declares weights but holds none): the
candidates of the same shape (under those layouts) in the same block, ranked by what the names say
(`wq`, `q_proj`, `query` are all the query), so the proposal is lower-confidence and says so.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.mapping.maps import expand, generalise, write_map

# What a port may call each part of a Whisper encoder layer (lower case, matched per name segment).
ROLES = {
    "attn.query": ("query", "q", "wq", "q_proj", "to_q"),
    "attn.key": ("key", "k", "wk", "k_proj", "to_k"),
    "attn.value": ("value", "v", "wv", "v_proj", "to_v"),
    "attn.out": ("out", "o", "wo", "out_proj", "o_proj", "to_out", "dense"),
    "attn_ln": ("attn_ln", "attention_norm", "self_attn_layer_norm", "ln1", "ln_1", "norm1", "input_layernorm"),
    "mlp_ln": (
        "mlp_ln",
        "mlp_norm",
        "final_layer_norm",
        "ln2",
        "ln_2",
        "norm2",
        "ffn_norm",
        "post_attention_layernorm",
    ),
    "mlp.0": ("fc1", "w1", "up", "up_proj", "c_fc", "0", "linear1"),
    "mlp.2": ("fc2", "w2", "down", "down_proj", "c_proj", "2", "linear2"),
    "conv1": ("conv1", "conv_1", "convs.0"),
    "conv2": ("conv2", "conv_2", "convs.1"),
    "positional_embedding": ("positional_embedding", "embed_positions", "pos_embed", "position_embedding", "pos"),
    "ln_post": ("ln_post", "norm", "layer_norm", "final_norm", "ln_f", "norm_out"),
}


@dataclass
class WeightMatch:
    reference: str
    port: str
    layout: str  # "as is", "transposed", "permuted (2, 1, 0)", "reshaped", "part 1 of 3 along axis 0 (fused)"
    basis: str  # "value" (same numbers) or "shape" (shape and name only)
    confidence: float
    perm: tuple | None = None
    part: tuple | None = None  # (index, of, axis)


@dataclass
class WeightMap:
    matches: list[WeightMatch]
    unmatched_reference: list[str] = field(default_factory=list)
    unmatched_port: list[str] = field(default_factory=list)

    def by_reference(self) -> dict[str, WeightMatch]:
        return {m.reference: m for m in self.matches}

    def rules(self) -> dict[str, object]:
        """The [weights] section: reference name (pattern) = port name, or a table with its layout."""
        pairs = {}
        for m in self.matches:
            entry: object = m.port
            if m.layout != "as is":
                entry = {"name": m.port, "layout": m.layout}
                if m.layout == "reshaped":
                    entry["shape"] = list(m.perm)
            pairs[m.reference] = entry
        return generalise(pairs, _block_index)

    def write(self, path, ops: dict | None = None):
        return write_map(path, {**({"ops": ops} if ops else {}), "weights": self.rules()})

    def load(self, reference: dict[str, np.ndarray], dtype=np.float32) -> dict[str, np.ndarray]:
        """The reference's tensors under the port's names, in the port's layouts (fused tensors re-fused)."""
        out: dict[str, np.ndarray] = {}
        parts: dict[str, dict[int, np.ndarray]] = {}
        for m in self.matches:
            ref = np.asarray(reference[m.reference], dtype=np.float32)
            if m.part is not None:
                parts.setdefault(m.port, {})[m.part[0]] = (ref, m.part)
                continue
            out[m.port] = np.ascontiguousarray(to_port_layout(ref, m), dtype=dtype)
        for name, pieces in parts.items():
            n, axis = next(iter(pieces.values()))[1][1:]
            shape = next(iter(pieces.values()))[0].shape
            arrays = [
                pieces[i][0] if i in pieces else np.zeros(shape, np.float32) for i in range(n)
            ]  # Whisper: no k bias
            out[name] = np.ascontiguousarray(np.concatenate(arrays, axis=axis), dtype=dtype)
        return out

    def lines(self) -> list[str]:
        out = [
            f"{m.reference} <- {m.port} ({m.layout}; by {m.basis}, confidence {m.confidence:.2f})" for m in self.matches
        ]
        out += [f"reference weight with no port weight: {n}" for n in self.unmatched_reference]
        out += [f"port weight with no reference weight: {n}" for n in self.unmatched_port]
        return out


def to_port_layout(ref: np.ndarray, m: WeightMatch) -> np.ndarray:
    if m.perm is None:
        return ref
    if m.layout == "reshaped":
        return ref.reshape(m.perm)
    # port = ref viewed so that transpose(port_squeezed, perm) == ref  ->  port_squeezed = ref.transpose(argsort(perm))
    return np.transpose(ref, np.argsort(m.perm))


def _block_index(name: str) -> int | None:
    m = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.sort(np.asarray(a, np.float32).ravel()).tobytes()).hexdigest()


def _shape(x) -> tuple:
    return tuple(int(d) for d in (x.shape if hasattr(x, "shape") else x))


def _layout_of(ref_shape: tuple, port_shape: tuple, ref=None, port=None):
    """(layout, perm) such that the port's tensor, viewed that way, is the reference's; None when none fits.

    With values, the reading must reproduce the reference exactly; with shapes only, the first that fits."""
    squeezed = tuple(d for d in port_shape if d != 1) if len(port_shape) > len(ref_shape) else port_shape
    p = None if port is None else np.asarray(port, np.float32).reshape(squeezed)
    r = None if ref is None else np.asarray(ref, np.float32)
    candidates = []
    if len(squeezed) == len(ref_shape):
        for perm in permutations(range(len(squeezed))):
            if tuple(squeezed[i] for i in perm) == tuple(ref_shape):
                candidates.append(perm)
    for perm in candidates:
        if p is None or np.array_equal(np.transpose(p, perm), r):
            ident = perm == tuple(range(len(perm)))
            if ident and squeezed == port_shape:
                return "as is", None
            if ident:
                return "reshaped", tuple(port_shape)
            return ("transposed" if len(perm) == 2 else f"permuted {perm}"), perm
    if int(np.prod(port_shape)) == int(np.prod(ref_shape)) and (
        p is None and not candidates or p is not None and np.array_equal(p.ravel(), r.ravel())
    ):
        return "reshaped", tuple(port_shape)
    return None


def propose(port: dict[str, object], reference: dict[str, np.ndarray], *, encoder_only: bool = True) -> WeightMap:
    """Match every port weight to a reference weight (see the module docstring)."""
    reference = {k: v for k, v in reference.items() if not encoder_only or k.startswith("encoder.")}
    if not reference:
        raise WhisperdiffError("the reference has no encoder weights to map to")
    with_values = {k: v for k, v in port.items() if hasattr(v, "dtype") and getattr(v, "size", 0) and np.any(v)}
    matches, used_ref, used_port = [], set(), set()
    if with_values:
        matches += _by_value(with_values, reference, used_ref, used_port)
    matches += _by_shape(
        {k: _shape(v) for k, v in port.items() if k not in used_port},
        {k: v for k, v in reference.items() if k not in used_ref},
        used_ref,
        used_port,
    )
    order = {k: i for i, k in enumerate(reference)}
    matches.sort(key=lambda m: order[m.reference])
    return WeightMap(matches, [k for k in reference if k not in used_ref], [k for k in port if k not in used_port])


def _by_value(port, reference, used_ref, used_port) -> list[WeightMatch]:
    index: dict[str, list[str]] = {}
    for name, a in reference.items():
        index.setdefault(_digest(a), []).append(name)
    out = []
    for pname, value in port.items():
        value = np.asarray(value, np.float32)
        names = [n for n in index.get(_digest(value), []) if n not in used_ref]
        if names:
            ref = _closest(pname, names)
            layout = _layout_of(reference[ref].shape, value.shape, reference[ref], value)
            if layout is not None:
                out.append(WeightMatch(ref, pname, layout[0], "value", 1.0 if len(names) == 1 else 0.8, layout[1]))
                used_ref.add(ref)
                used_port.add(pname)
                continue
        for axis, size in enumerate(value.shape):  # fused: three reference tensors along one axis
            if size % 3:
                continue
            pieces = np.split(value, 3, axis=axis)
            found = []
            for i, piece in enumerate(pieces):
                cands = [n for n in index.get(_digest(piece), []) if n not in used_ref]
                if cands:
                    ref = _closest(pname, cands, hint=("query", "key", "value")[i])
                    lay = _layout_of(reference[ref].shape, piece.shape, reference[ref], piece)
                    if lay is not None:
                        found.append((i, ref, lay))
            if len(found) >= 2 and all(not np.any(pieces[i]) for i in set(range(3)) - {f[0] for f in found}):
                for i, ref, lay in found:
                    out.append(
                        WeightMatch(
                            ref,
                            pname,
                            f"part {i + 1} of 3 along axis {axis} (fused)",
                            "value",
                            1.0,
                            lay[1],
                            part=(i, 3, axis),
                        )
                    )
                    used_ref.add(ref)
                used_port.add(pname)
                break
    return out


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[.:_]", name.lower()) if t and not t.isdigit()] + [s for s in name.lower().split(".")]


def _role_score(port_name: str, ref_name: str) -> float:
    """How much the port's name says it is the reference's tensor: a role synonym, else string likeness."""
    if port_name == ref_name or f"encoder.{port_name}" == ref_name:
        return 3.0
    base = re.sub(r"^encoder\.(blocks\.\d+\.)?", "", ref_name)
    base = base.rsplit(".", 1)[0] if "." in base else base  # attn.query, mlp.0, conv1, positional_embedding
    segs = [s.lower() for s in port_name.split(".")]
    p_last = port_name.rsplit(".", 1)[-1].lower()
    r_last = ref_name.rsplit(".", 1)[-1]
    suffix_ok = (
        1.0 if (p_last in ("weight", "filter", "kernel", "w", "scale", "gamma")) == (r_last == "weight") else 0.5
    )
    joined = ".".join(segs[:-1])
    synonyms = ROLES.get(base, ())
    if "." not in ref_name.removeprefix("encoder."):  # a bare tensor (the positional embedding): any segment
        segs, joined = segs + [""], port_name.lower()
    roles = segs[:-1]
    digits = [i for i, s in enumerate(roles) if s.isdigit()]
    if digits and _block_index(ref_name) is not None:  # the block index is no role: `layers.2.mlp_norm` is not mlp.2
        del roles[digits[0]]
    if any(s in roles or joined.endswith(s) for s in synonyms):
        return 2.0 * suffix_ok
    return difflib.SequenceMatcher(None, joined, base).ratio() * suffix_ok


def _closest(pname: str, names: list[str], hint: str | None = None) -> str:
    block = re.findall(r"(?:^|\.)(\d+)\.", pname)

    def score(n):
        same_block = 1.0 if block and _block_index(n) == int(block[0]) else 0.0
        return (same_block, (hint in n) if hint else 0, _role_score(pname, n))

    return max(names, key=score)


def _by_shape(port: dict[str, tuple], reference: dict[str, np.ndarray], used_ref, used_port) -> list[WeightMatch]:
    out = []
    scored = []
    for rname, ref in reference.items():
        rblock = _block_index(rname)
        for pname, pshape in port.items():
            lay = _layout_of(tuple(ref.shape), pshape)
            if lay is None:
                continue
            pblocks = [int(x) for x in re.findall(r"(?:^|\.)(\d+)\.", pname)]
            if (rblock is None) != (not pblocks) or (rblock is not None and rblock not in pblocks[:1]):
                continue
            scored.append((_role_score(pname, rname), rname, pname, lay))
    for score, rname, pname, lay in sorted(scored, key=lambda s: -s[0]):
        if rname in used_ref or pname in used_port or score < 0.5:
            continue
        out.append(WeightMatch(rname, pname, lay[0], "shape", round(min(score / 2.0, 0.9), 2), lay[1]))
        used_ref.add(rname)
        used_port.add(pname)
    # A shape that several axis orders fit (a [3, C, C] filter) follows the order the unambiguous ones use.
    usual = Counter(m.perm for m in out if m.perm and len(set(reference[m.reference].shape)) == len(m.perm))
    for m in out:
        shape = reference[m.reference].shape
        if m.perm and len(set(shape)) < len(m.perm):
            best = next(
                (
                    p
                    for p, _ in usual.most_common()
                    if len(p) == len(m.perm) and tuple(port[m.port][i] for i in p) == tuple(shape)
                ),
                None,
            )
            if best is not None:
                m.perm, m.layout = best, ("transposed" if len(best) == 2 else f"permuted {best}")
    return out


def from_rules(rules: dict[str, object], reference: dict[str, np.ndarray]) -> WeightMap:
    """A WeightMap from a saved [weights] section (maps.py), for these reference names."""
    expanded = expand(rules, [k for k in reference if k.startswith("encoder.")])
    matches = []
    for ref, entry in expanded.items():
        name, layout = (entry["name"], entry.get("layout", "as is")) if isinstance(entry, dict) else (entry, "as is")
        perm = None
        m = re.fullmatch(r"permuted \(([\d, ]+)\)", layout)
        if m:
            perm = tuple(int(x) for x in m.group(1).split(","))
        elif layout == "transposed":
            perm = (1, 0)
        elif layout.startswith("part "):
            i, n, axis = (int(x) for x in re.findall(r"\d+", layout)[:3])
            matches.append(WeightMatch(ref, name, layout, "map", 1.0, None, part=(i - 1, n, axis)))
            continue
        elif layout == "reshaped" and isinstance(entry, dict) and "shape" in entry:
            perm = tuple(entry["shape"])
        matches.append(WeightMatch(ref, name, layout, "map", 1.0, perm))
    return WeightMap(matches, [k for k in reference if k.startswith("encoder.") and k not in expanded], [])
