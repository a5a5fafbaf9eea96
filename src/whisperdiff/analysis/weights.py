"""Did the port load the right weights? Compare the tensors two implementations actually used, by name.

    whisperdiff weights default my_port_weights.npz [--rename RULES.toml]

A: the reference weights (any `--model` spec). B: the weights the other implementation used: a
model spec, an .npz of named arrays (what a port can dump in one line: np.savez(path, **weights)),
or an openai-whisper .pt read without the shape checks a model load does. Names: openai-whisper's
(with or without `encoder.`), mapped with rename rules (align.py), or any names at all: then B's tensors
are matched to A's by the numbers they hold, then by shape and name (match_names). Known layout changes are undone
before values are compared: transposed linear weights and conv filters in another axis order, when
that is the implementation's convention (most tensors of the kind), and fused q/k/v
(`blocks.N.attn.qkv.weight`, [3C, C], split into query, key, value). What is left is reported by name:
missing, transposed (against the convention), scaled, substituted (unrelated values), or different.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.inputs.models import load_model
from whisperdiff.mapping.align import rename

STATUS_ORDER = ["missing", "substituted", "transposed", "layout", "scaled", "different", "shape", "unexpected", "ok"]


@dataclass
class TensorCheck:
    name: str
    status: str  # ok, missing, transposed, scaled, substituted, different, shape, unexpected
    layout: str  # how B stores it: "as is", "transposed", "permuted (2, 1, 0)", "from fused qkv", ...
    detail: str
    b_name: str = ""  # B's own name for it, when B's names were matched to A's by value (or shape and name)
    matched_by: str = "name"  # name (B uses A's names, or rules map them), value, or shape (and name)


def load_weights(spec: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """(name -> float array, description) from a model spec, an .npz, or a .pt state dict (unchecked)."""
    path = Path(str(spec))
    if path.suffix == ".npz":
        if not path.is_file():
            raise WhisperdiffError(f"weights file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise ValueError("it holds one array, not named arrays")
                weights = {k: np.asarray(z[k]) for k in z.files}
        except Exception as e:  # truncated, empty, not a zip, pickled objects, bad CRC: all one clean error
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise WhisperdiffError(
                f"cannot read {path} as .npz ({type(e).__name__}: {why}); save with numpy.savez(path, **weights)"
            ) from None
        bad = [k for k, v in weights.items() if v.dtype.kind not in "fiub"]
        if bad:
            raise WhisperdiffError(f"{path}: {bad[0]} holds {weights[bad[0]].dtype}, not numbers")
        return weights, f"npz:{path}"
    if path.suffix == ".pt" and path.is_file():
        import torch

        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WhisperdiffError(
                f"cannot read {path} with weights_only=True ({type(e).__name__}); whisperdiff never unpickles code"
            ) from None
        sd = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(sd, dict):
            raise WhisperdiffError(f"{path} holds no state dict")
        return {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}, f"openai-whisper:{path}"

    m = load_model(str(spec))
    return {k: v.float().numpy() for k, v in m.state_dict.items()}, m.source


def _canonical(name: str, rules) -> str:
    """A's name for B's tensor `name`: rules apply to the name as the messages print it (with `encoder.`
    in front when B's has none), else to B's own name."""
    printed = name if name.startswith(("encoder.", "decoder.")) else f"encoder.{name}"
    if rules:
        renamed = rename(printed, rules)
        if renamed == printed:
            renamed = rename(name, rules)
        name = renamed
    return name if name.startswith(("encoder.", "decoder.")) else f"encoder.{name}"


def match_names(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """B's tensors under A's names, matched by the numbers they hold (a permuted or fused tensor holds the
    same numbers), then by shape and name for what no value matches (a scaled or substituted tensor):
    (B renamed, {A's name: (B's name, "value" | "shape")}). B's tensors nothing matches keep their names."""
    from whisperdiff.mapping.weightmap import propose

    m = propose(b, a, encoder_only=False)
    out, how = {}, {}
    for match in m.matches:
        value = np.asarray(b[match.port])
        if match.part is not None:  # one of a fused q/k/v
            index, n, axis = match.part
            value = np.split(value, n, axis=axis)[index]
        out[match.reference] = value
        how[match.reference] = (match.port, match.basis)
    for name in m.unmatched_port:
        out[name] = b[name]
    return out, how


def compare_weights(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, rules=None, encoder_only: bool = True
) -> list[TensorCheck]:
    """Per reference tensor, what B holds for it (see the module docstring). Worst first. When most of B's
    names are none of A's (after the rules), B's tensors are matched to A's by value first (match_names)."""
    b = {_canonical(k, rules): np.asarray(v, np.float32) for k, v in b.items()}
    b = _split_fused(b)
    a = {k: np.asarray(v, np.float32) for k, v in a.items() if not encoder_only or k.startswith("encoder.")}
    how: dict = {}
    if sum(k in a for k in b) < len(b) / 2:  # B speaks another naming: its numbers say which is which
        b, how = match_names(a, {k.removeprefix("encoder."): v for k, v in b.items()})
    candidates = {name: _layouts(ref, b[name]) for name, ref in a.items() if name in b}
    # The implementation's convention per kind of tensor: the layout most tensors of that kind match
    # in, counting only tensors whose shape leaves one reading (not square matrices, not in == out convs).
    convention = {}
    for kind in {_kind(n, a[n]) for n in candidates}:
        votes = Counter(
            c[0][0]
            for n, c in candidates.items()
            if _kind(n, a[n]) == kind and len(c) == 1 and a[n].ndim > 1 and len(set(a[n].shape)) == a[n].ndim
        )
        convention[kind] = votes.most_common(1)[0][0] if votes else "as is"
    layouts = {
        n: next((c for c in cs if c[0] == convention[_kind(n, a[n])]), cs[0] if cs else (None, None))
        for n, cs in candidates.items()
    }
    checks = []
    for name, ref in a.items():
        if name not in b:
            checks.append(TensorCheck(name, "missing", "", f"B has no tensor for {name} (shape {list(ref.shape)})"))
            continue
        layout, value = layouts[name]
        if layout is None:
            checks.append(
                TensorCheck(name, "shape", "", f"B's {list(b[name].shape)} fits no layout of {list(ref.shape)}")
            )
            continue
        kind = _kind(name, ref)
        usual = convention.get(kind, "as is")
        square = ref.ndim == 2 and ref.shape[0] == ref.shape[1]
        if square and usual == "transposed":  # a square matrix keeps its shape: follow the convention
            layout, value = "transposed", value.T
        if layout != usual and not square:
            status = "transposed" if kind == "linear" else "layout"
            checks.append(
                TensorCheck(
                    name,
                    status,
                    layout,
                    f"stored {layout} ({list(b[name].shape)}) while the other {kind} tensors are stored {usual}",
                )
            )
            continue
        status, detail = _values(ref, value)
        if status != "ok" and square and _values(ref, value.T)[0] == "ok":
            status, detail = "transposed", f"a square matrix stored the other way round from the other {kind} tensors"
        checks.append(TensorCheck(name, status, layout, detail))
    for c in checks:
        if c.name in how:
            c.b_name, c.matched_by = how[c.name]
    for name in sorted(set(b) - set(a)):
        if not encoder_only or name.startswith("encoder."):
            checks.append(TensorCheck(name, "unexpected", "", "in B, not a tensor of the reference (see --rename)"))
    return sorted(checks, key=lambda c: STATUS_ORDER.index(c.status))


def _kind(name: str, ref: np.ndarray) -> str:
    if ref.ndim == 3:
        return "conv"
    if ref.ndim == 2 and not name.endswith("positional_embedding"):
        return "linear"
    return "vector"


def _layouts(ref: np.ndarray, got: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Every reading of B's array in the reference's shape: as is, transposed, or an axis permutation
    (after dropping size-1 axes, e.g. MAX's [1, k, in, out] conv filters). Values are judged later."""
    g = got.reshape([d for d in got.shape if d != 1]) if got.ndim > ref.ndim else got
    if g.shape == ref.shape and g.ndim <= 2:  # (a square matrix's orientation is judged by its values)
        return [("as is", g)]
    if g.ndim == 2 and g.shape[::-1] == ref.shape:
        return [("transposed", g.T)]
    found = []
    if g.ndim == ref.ndim:
        for perm in permutations(range(g.ndim)):
            if tuple(g.shape[p] for p in perm) == ref.shape:
                found.append(("as is" if perm == tuple(range(g.ndim)) else f"permuted {perm}", np.transpose(g, perm)))
    return found


def _values(ref: np.ndarray, got: np.ndarray) -> tuple[str, str]:
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return "ok", "both zero"
    rel = np.linalg.norm(b - a) / max(na, 1e-30)
    cos = float(a @ b / max(na * nb, 1e-30))
    if rel < 2e-3:  # float16 storage rounds to ~5e-4
        return "ok", f"rel L2 {rel:.1e}"
    if cos > 0.9999:
        return "scaled", f"B = {nb / na:.4g} x A (cosine {cos:.6f})"
    if abs(cos) < 0.2:
        return "substituted", f"unrelated values: cosine {cos:.3f}, std B/A {got.std() / max(ref.std(), 1e-30):.3g}"
    return "different", f"rel L2 {rel:.3g}, cosine {cos:.4f}"


def _split_fused(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """blocks.N.attn.qkv.{weight,bias} ([3C, C] / [3C]) -> query, key, value (key has no bias in Whisper)."""
    out = dict(b)
    for name in list(b):
        m = re.fullmatch(r"(.*\.attn)\.qkv\.(weight|bias)", name)
        if not m:
            continue
        fused = out.pop(name)
        q, k, v = np.split(fused, 3, axis=0)
        out[f"{m.group(1)}.query.{m.group(2)}"], out[f"{m.group(1)}.value.{m.group(2)}"] = q, v
        if m.group(2) == "weight":
            out[f"{m.group(1)}.key.weight"] = k
    return out
