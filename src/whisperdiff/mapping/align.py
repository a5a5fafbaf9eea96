"""Pair the ops of two traces: by canonical name, through rename rules, across known layouts.

A trace from another implementation may name its ops differently (rename rules map them to canonical
names) and store them in another layout ([B,T,C] for [B,C,T], heads split); `align` finds the view of
the candidate that has the reference's shape and says which one it used. Nothing here reads values.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError


@dataclass
class Pair:
    name: str  # canonical name (the reference's)
    a_shape: tuple | None  # None: op only in the candidate
    b_shape: tuple | None  # None: op only in the reference
    b_name: str | None = None  # the candidate's own name for it
    layout: str | None = None  # how the candidate was viewed to match, e.g. "[B,T,C] -> [B,C,T]"
    problem: str | None = None  # why it could not be matched (shape)

    @property
    def matched(self) -> bool:
        return self.a_shape is not None and self.b_shape is not None and self.problem is None


def load_rename_rules(path: str | Path | None) -> list[tuple[re.Pattern, str]]:
    """Rules from a JSON or TOML file: {"rename": {"candidate.layers.*.q_proj": "blocks.*.attn.q", ...}}.

    `*` matches any run of characters (shortest first) and carries over, in order, to the `*`s of the
    canonical name. The first rule that matches a name wins."""
    if path is None:
        return []
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise WhisperdiffError(f"rename rules {path} not found") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WhisperdiffError(f"rename rules {path} are not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from None
    rules = data.get("rename", data) if isinstance(data, dict) else None
    if not isinstance(rules, dict) or not all(isinstance(v, str) for v in rules.values()):
        raise WhisperdiffError(f'rename rules {path}: expected a table "rename" of pattern = "canonical.name"')
    return compile_rename_rules(rules)


def compile_rename_rules(rules: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    """{"layers.*.q": "blocks.*.attn.q"} -> matchers; each * matches within and across dots."""
    compiled = []
    for pattern, target in rules.items():
        if pattern.count("*") != target.count("*"):
            raise WhisperdiffError(f"rename rule {pattern!r} -> {target!r}: both sides need the same number of *")
        regex = re.compile("^" + r"(.+?)".join(re.escape(p) for p in pattern.split("*")) + "$")
        compiled.append((regex, target))
    return compiled


def rename(name: str, rules) -> str:
    for regex, target in rules:
        m = regex.match(name)
        if m:
            pieces = target.split("*")
            return pieces[0] + "".join(g + p for g, p in zip(m.groups(), pieces[1:], strict=True))
    return name


def layout_view(a_shape: tuple, b_shape: tuple, n_head: int | None = None):
    """(function viewing a candidate array in the reference's shape, description) or None when none fits.
    Where two layouts fit one shape (heads split with as many heads as positions), the first of layout_views."""
    views = layout_views(a_shape, b_shape)
    return views[0] if views else None


def layout_views(a_shape: tuple, b_shape: tuple) -> list:
    """Every known layout under which a candidate of shape b_shape holds the reference's a_shape, as
    (view function, description): one, mostly; two where the shape cannot say (heads split [B,H,T,D] or
    [B,T,H,D] when H == T, as a decoder step over 6 positions with 6 heads)."""
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if a_shape == b_shape:
        return [((lambda x: x), None)]
    if len(a_shape) == len(b_shape) >= 2 and a_shape == b_shape[:-2] + (b_shape[-1], b_shape[-2]):
        return [((lambda x: np.swapaxes(x, -1, -2)), f"{list(b_shape)} transposed (last two axes)")]
    if len(b_shape) == len(a_shape) - 1 and a_shape[0] == 1 and b_shape == a_shape[1:]:
        return [((lambda x: x[None]), f"{list(b_shape)} without the batch axis")]
    views = []
    if len(a_shape) == 3 and len(b_shape) == 4 and b_shape[0] == a_shape[0]:
        b, t, c = a_shape
        if b_shape[1] == t and b_shape[2] * b_shape[3] == c:  # [B, T, H, D]
            views.append(((lambda x: x.reshape(b, t, c)), f"{list(b_shape)} heads split [B,T,H,D]"))
        if b_shape[2] == t and b_shape[1] * b_shape[3] == c:  # [B, H, T, D]
            views.append(
                ((lambda x: np.transpose(x, (0, 2, 1, 3)).reshape(b, t, c)), f"{list(b_shape)} heads split [B,H,T,D]")
            )
    return views


def pick_view(shape: tuple, c, ref=None, values: dict | None = None):
    """The layout (view, description) under which captured value c is taken as an op of `shape`: where the
    shape allows two, the one closest to the reference's value; with none to ask, heads first [B,H,T,D]
    for what an attention product makes (sdpa and p @ v compute heads first), else the other."""
    from whisperdiff.measure.metrics import rel_l2

    views = layout_views(shape, c.shape)
    if len(views) > 1 and ref is not None and values is not None and c.key in values:
        return min(views, key=lambda v: rel_l2(ref, v[0](np.asarray(values[c.key]))))
    if len(views) > 1 and any(w in c.op for w in ("attention", "matmul", "bmm", "einsum")):
        return next((v for v in views if v[1] and "[B,H,T,D]" in v[1]), views[0])
    return views[0]


def align(a_ops: dict[str, tuple], b_ops: dict[str, tuple], rules=()) -> tuple[list[Pair], dict]:
    """Pairs in the reference's op order, then the candidate-only ops; and the layout views by name."""
    b_by_canonical = {}
    for b_name, shape in b_ops.items():
        b_by_canonical.setdefault(rename(b_name, rules), (b_name, shape))
    pairs, views = [], {}
    for name, a_shape in a_ops.items():
        if name not in b_by_canonical:
            pairs.append(Pair(name, tuple(a_shape), None))
            continue
        b_name, b_shape = b_by_canonical.pop(name)
        view = layout_view(a_shape, b_shape)
        pair = Pair(name, tuple(a_shape), tuple(b_shape), b_name)
        if view is None:
            pair.problem = f"shapes {list(a_shape)} and {list(b_shape)} match under no known layout"
        else:
            views[name], pair.layout = view
        pairs.append(pair)
    for name, (b_name, b_shape) in b_by_canonical.items():
        pairs.append(Pair(name, None, tuple(b_shape), b_name))
    return pairs, views
