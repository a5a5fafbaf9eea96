"""One map file, one syntax: which port value is which canonical op, which port weight is which reference weight.

    # whisperdiff map. Left: whisperdiff's name; right: the port's. `*` is one dotted name segment.
    [ops]
    "conv1" = "conv1"
    "blocks.*.attn.q" = "layers.*.attention.wq"
    "blocks.*.attn.wv" = "layers.*.attention:reshape#3"
    [weights]
    "encoder.blocks.*.attn.query.weight" = "layers.*.attention.wq.weight"
    "encoder.conv1.weight" = { name = "conv1.weight", layout = "permuted (2, 1, 0)" }
    [graph]
    values = 344                # the capture the map was made from: a map used on another graph says
    fingerprint = "9c1e0a..."   # so, and which of its entries no longer fit

`*` means one segment between dots in every place whisperdiff reads a pattern (capture's output
selection, this file, weight maps); the n-th `*` on the left is the n-th on the right. Written by
`automap`/`weightmap`, readable and editable by hand, and reused: with a saved map a port is aligned by
it first, and automatically only where it says nothing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from whisperdiff.errors import WhisperdiffError

HEADER = "# whisperdiff map. Left: whisperdiff's name; right: the port's. `*` is one dotted name segment.\n"


def pattern_regex(pattern: str) -> re.Pattern:
    """`layers.*.wq` -> a regex whose groups are the segments each `*` stands for."""
    return re.compile("^" + "([^.]+)".join(re.escape(p) for p in pattern.split("*")) + "$")


def substitute(pattern: str, groups) -> str:
    pieces = pattern.split("*")
    if len(pieces) - 1 != len(groups):
        raise WhisperdiffError(f"map entry {pattern!r}: its number of * does not match the other side")
    return pieces[0] + "".join(g + p for g, p in zip(groups, pieces[1:], strict=True))


def expand(rules: dict[str, object], names) -> dict[str, object]:
    """{left pattern: right (pattern or table)} applied to concrete left `names`: {name: right with * filled}."""
    compiled = [(pattern_regex(k), k, v) for k, v in rules.items()]
    out = {}
    for name in names:
        for regex, _, right in compiled:
            m = regex.match(name)
            if m:
                if isinstance(right, dict):
                    out[name] = {**right, "name": substitute(right["name"], m.groups())}
                else:
                    out[name] = substitute(str(right), m.groups())
                break
    return out


def generalise(pairs: dict[str, object], index_of) -> dict[str, object]:
    """{left: right} -> fewer rules: entries that differ only by a block index become one `*` rule.

    index_of(left) gives the block index in a left name (or None); the right side's segment equal to it
    becomes `*` (the first, if several are). Rules are kept only if they reproduce every pair they cover."""
    rules: dict[str, object] = {}
    for left, right in pairs.items():
        i = index_of(left)
        name = right["name"] if isinstance(right, dict) else right
        parts = re.split(r"([.:#])", name)
        hits = [j for j, s in enumerate(parts) if i is not None and s == str(i)]
        if not hits:  # (with several, the first: a block index comes before a layer's own numbering)
            rules[left] = right
            continue
        parts[hits[0]] = "*"
        pat_right = "".join(parts)
        pat_left = re.sub(rf"(^|\.){i}(\.|$)", r"\1*\2", left, count=1)
        new = {**right, "name": pat_right} if isinstance(right, dict) else pat_right
        if pat_left in rules and rules[pat_left] != new:
            rules[left] = right  # blocks disagree: keep this one exact
        else:
            rules.setdefault(pat_left, new)
    # an exact rule listed after a pattern that already covers it would never be used: put exact rules first
    exact = {k: v for k, v in rules.items() if "*" not in k}
    return {**exact, **{k: v for k, v in rules.items() if "*" in k}}


def write_map(path: str | Path, sections: dict[str, dict[str, object]], comments: dict[str, str] | None = None) -> Path:
    """Write [ops] / [weights] tables as TOML (a small writer: tomllib only reads)."""

    def value(v) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {_q(x)}" for k, x in v.items()) + " }"
        return _q(v)

    lines = [HEADER.rstrip()]
    for section, entries in sections.items():
        lines.append(f"\n[{section}]")
        for k, v in entries.items():
            note = (comments or {}).get(f"{section}.{k}")
            lines.append(f"{_q(k)} = {value(v)}" + (f"  # {note}" if note else ""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _q(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_q(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_map(path: str | Path) -> dict[str, dict[str, object]]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise WhisperdiffError(f"map {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise WhisperdiffError(f"map {path} is not valid TOML: {e}") from None
    for section in ("ops", "weights", "graph"):
        if not isinstance(data.get(section, {}), dict):
            raise WhisperdiffError(f"map {path}: [{section}] must be a table of name = port name")
    return {"ops": data.get("ops", {}), "weights": data.get("weights", {}), "graph": data.get("graph", {})}
