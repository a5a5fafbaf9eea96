"""Tolerances: when an op's numbers are close enough. One `Tolerance` per op, from a TOML file of
defaults plus per-op glob rules; shipped files for float32, half precision and TF32 (a GPU's float32).

    # float32.toml
    [default]
    min_cosine = 0.99999
    max_rel_l2 = 1e-4

    [ops."blocks.*.attn.weights"]     # globs: * matches within and across dots
    max_abs = 1e-3

Every rule whose glob matches an op applies, in file order (later keys win). Keys: see FIELDS.
Unknown keys, wrong types and malformed TOML are errors that name the line.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path

from whisperdiff.errors import WhisperdiffError

# The element-wise closeness a mismatch share counts against (measure/metrics.py), and the defaults of
# Tolerance. They live here, not in metrics, so the CLI can show every default without importing numpy.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


def new_nonfinite(row: dict) -> bool:
    """B has NaN/Inf that A does not."""
    return row["nan_b"] + row["inf_b"] > row["nan_a"] + row["inf_a"]


FIELDS = {
    "min_cosine": "an op fails below this cosine",
    "max_rel_l2": "an op fails above this relative L2 error ||B - A|| / ||A||",
    "max_abs": "an op fails when any |B - A| exceeds this",
    "atol": "absolute part of the element test |B - A| <= atol + rtol |A|",
    "rtol": "relative part of the element test",
    "max_mismatch": "the largest share (0..1) of elements allowed to fail the element test",
    "max_std_ratio_dev": "an op fails when |std B / std A - 1| exceeds this (a variance mismatch)",
}
SHIPPED = ("float32", "half", "tf32")


@dataclass(frozen=True)
class OpFailure:
    """One limit one op breaks: what `check` fails on, what compare's table and the report show."""

    op: str
    metric: str  # cosine, rel_l2, max_abs, mismatch_share, std_ratio_dev, nonfinite(_reference), missing, shape
    value: float  # NaN where there is no number (missing, shape)
    limit: str  # e.g. "<= 0.0001"; for shape, what differs

    def __str__(self) -> str:
        value = "" if math.isnan(self.value) else f"{self.value:.4g} "
        return f"{self.op}: {self.metric} {value}(limit {self.limit})"

    @property
    def text(self) -> str:
        """The failure without the op's name, as compare's table shows it."""
        if self.metric == "shape":
            return self.limit
        if self.metric == "missing":
            return "missing in B"
        return f"{self.metric} {self.value:.4g} (limit {self.limit})"

    def to_json(self) -> dict:
        return {
            "op": self.op,
            "metric": self.metric,
            "value": None if math.isnan(self.value) else self.value,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class Tolerance:
    """The limits for one op. None: that limit is not checked.

    The defaults are the MAX-vs-torch float32 bar; half precision needs the looser `half` file."""

    min_cosine: float | None = 0.99999
    max_rel_l2: float | None = 1e-4
    max_abs: float | None = None
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    max_mismatch: float | None = None
    max_std_ratio_dev: float | None = None

    def __post_init__(self):
        """Every limit finite and in range: a NaN limit would switch its test off without a word."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name not in ("atol", "rtol"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise WhisperdiffError(
                    f"{f.name} = {value!r} must be a finite number >= 0 (--{f.name.replace('_', '-')})"
                )
            if f.name in ("min_cosine", "max_mismatch") and value > 1:
                raise WhisperdiffError(f"{f.name} = {value!r} must be between 0 and 1")

    def failures(self, row: dict, op: str | None = None) -> list[OpFailure]:
        """Every limit the row breaks; [] when the op holds. op: the op's name (default: the row's)."""
        op = op if op is not None else str(row.get("op") or row.get("name") or "")
        out = []
        ref_bad = row.get("nan_a", 0) + row.get("inf_a", 0)
        if ref_bad:  # the metrics leave non-finite elements out: a broken reference must not pass as "rel L2 0"
            out.append(OpFailure(op, "nonfinite_reference", float(ref_bad), "0 NaN/Inf in the reference A"))
        if new_nonfinite(row):
            out.append(
                OpFailure(
                    op, "nonfinite", float(row["nan_b"] + row["inf_b"]), f"<= {row['nan_a'] + row['inf_a']} NaN/Inf"
                )
            )
        checks = [
            ("cosine", row.get("cosine"), self.min_cosine, lambda v, lim: v >= lim, ">="),
            ("rel_l2", row.get("rel_l2"), self.max_rel_l2, lambda v, lim: v <= lim, "<="),
            ("max_abs", row.get("max_abs"), self.max_abs, lambda v, lim: v <= lim, "<="),
            ("mismatch_share", row.get("mismatch_share"), self.max_mismatch, lambda v, lim: v <= lim, "<="),
            (
                "std_ratio_dev",
                abs(row.get("std_ratio", math.nan) - 1),
                self.max_std_ratio_dev,
                lambda v, lim: v <= lim,
                "<=",
            ),
        ]
        for metric, value, limit, holds, sign in checks:
            if limit is None or value is None:
                continue
            if isinstance(value, float) and math.isnan(value):
                if metric in ("cosine", "rel_l2"):  # no number where one is required (e.g. A all zero)
                    out.append(OpFailure(op, metric, value, f"{sign} {limit:g}"))
                continue
            if not holds(value, limit):
                out.append(OpFailure(op, metric, float(value), f"{sign} {limit:g}"))
        return out

    def diverged(self, row: dict) -> bool:
        return bool(self.failures(row))


@dataclass
class ToleranceSet:
    """A default Tolerance plus per-op glob rules, as read from one TOML file."""

    default: Tolerance = field(default_factory=Tolerance)
    rules: list[tuple[str, dict]] = field(default_factory=list)  # (glob, {field: value}) in file order
    source: str = "built-in defaults"

    def for_op(self, name: str) -> Tolerance:
        tol = self.default
        for glob, values in self.rules:
            if fnmatch.fnmatchcase(name, glob):
                tol = replace(tol, **values)
        return tol

    @classmethod
    def of(cls, tolerance: Tolerance | ToleranceSet | None) -> ToleranceSet:
        if isinstance(tolerance, ToleranceSet):
            return tolerance
        return cls(default=tolerance or Tolerance(), source="command-line limits" if tolerance else "built-in defaults")

    def to_toml(self, header: str = "") -> str:
        lines = [f"# {line}" if line else "#" for line in header.splitlines()]
        lines += ["", "[default]", *_toml_values(self.default.__dict__)]
        for glob, values in self.rules:
            lines += ["", f'[ops."{glob}"]', *_toml_values(values)]
        return "\n".join(lines).lstrip("\n") + "\n"


def load_tolerances(spec: str | Path | None) -> ToleranceSet:
    """A shipped name (float32, half, tf32) or a TOML file path; None gives the shipped float32 file."""
    spec = "float32" if spec is None else spec
    if str(spec) in SHIPPED:
        text = resources.files("whisperdiff").joinpath(f"data/tolerances/{spec}.toml").read_text()
        return parse_tolerances(text, f"{spec} (shipped)")
    path = Path(spec)
    if not path.is_file():
        raise WhisperdiffError(
            f"tolerance file {path} does not exist; pass a TOML file or one of: {', '.join(SHIPPED)}"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise WhisperdiffError(f"cannot read tolerance file {path}: {e}") from None
    return parse_tolerances(text, str(path))


def parse_tolerances(text: str, source: str) -> ToleranceSet:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WhisperdiffError(f"{source}: malformed TOML ({e}); see docs/check.md for the format") from None
    for key in data:
        if key not in ("default", "ops"):
            raise WhisperdiffError(
                f'{source}: line {_line_of(text, key)}: unknown section {key!r}; use [default] and [ops."GLOB"]'
            )
    default = Tolerance(**_values(data.get("default", {}), text, source, "default"))
    ops = data.get("ops", {})
    if not isinstance(ops, dict):
        raise WhisperdiffError(f'{source}: line {_line_of(text, "ops")}: ops must be tables: [ops."GLOB"]')
    rules = [(glob, _values(values, text, source, glob)) for glob, values in ops.items()]
    return ToleranceSet(default, rules, source)


def _values(table, text: str, source: str, where: str) -> dict:
    if not isinstance(table, dict):
        raise WhisperdiffError(f"{source}: line {_line_of(text, where)}: {where} must be a table of limits")
    known = {f.name for f in fields(Tolerance)}
    out = {}
    for key, value in table.items():
        line = _line_of(text, key, after=where)
        if key not in known:
            raise WhisperdiffError(
                f"{source}: line {line}: unknown key {key!r} in [{where}]; known keys: {', '.join(FIELDS)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise WhisperdiffError(f"{source}: line {line}: {key} = {value!r} must be a finite number >= 0")
        if key in ("min_cosine", "max_mismatch") and value > 1:
            raise WhisperdiffError(f"{source}: line {line}: {key} = {value!r} must be between 0 and 1")
        out[key] = float(value)
    return out


def _line_of(text: str, key: str, after: str | None = None) -> int:
    """The 1-based line where `key` is set (after the header of section `after`), for error messages."""
    lines = text.splitlines()
    start = 0
    if after is not None:
        header = re.compile(r"^\s*\[\s*(ops\s*\.\s*)?[\"']?" + re.escape(after) + r"[\"']?\s*\]")
        start = next((i for i, line in enumerate(lines) if header.match(line)), 0)
    pattern = re.compile(r"^\s*(\[+\s*)?[\"']?" + re.escape(key) + r"[\"']?\s*[=.\]]")
    for i in range(start, len(lines)):
        if pattern.match(lines[i]):
            return i + 1
    return start + 1


def _toml_values(values: dict) -> list[str]:
    return [f"{k} = {_toml_number(v)}" for k, v in values.items() if v is not None]


def _toml_number(v: float) -> str:
    text = f"{v:.12g}"
    return text if any(c in text for c in ".e") else text + ".0"


def propose(
    rows: list[dict], factor: float = 10.0, floor_rel_l2: float = 1e-6, floor_cosine: float = 1e-9
) -> ToleranceSet:
    """Tolerances from a measured spread: per op kind (blocks.* folded together), the largest rel L2,
    1 - cosine and max |B - A| seen, times `factor`, never below the floors; the default is the
    loosest of them. `rows` are compare's table records of two runs that should agree."""
    if not math.isfinite(factor) or factor < 1:
        raise WhisperdiffError(
            f"--factor {factor} would make the tolerances tighter than the measured spread; use >= 1"
        )
    groups: dict[str, dict] = {}
    for r in rows:
        if r.get("rel_l2") is None or math.isnan(r["rel_l2"]):
            continue
        g = groups.setdefault(
            re.sub(r"^blocks\.\d+\.", "blocks.*.", r.get("op") or r["name"]), {"rel": 0.0, "cos": 0.0, "abs": 0.0}
        )
        g["rel"] = max(g["rel"], r["rel_l2"])
        g["cos"] = max(g["cos"], 1 - r["cosine"])
        g["abs"] = max(g["abs"], r["max_abs"])
    if not groups:
        raise WhisperdiffError("no op is in both traces, so there is no spread to measure")
    rules = []
    for glob, g in groups.items():
        rules.append(
            (
                glob,
                {
                    "min_cosine": 1 - _nice_up(max(g["cos"] * factor, floor_cosine)),
                    "max_rel_l2": _nice_up(max(g["rel"] * factor, floor_rel_l2)),
                    **({"max_abs": _nice_up(g["abs"] * factor)} if g["abs"] > 0 else {}),
                },
            )
        )
    default = Tolerance(
        min_cosine=min(v["min_cosine"] for _, v in rules), max_rel_l2=max(v["max_rel_l2"] for _, v in rules)
    )
    return ToleranceSet(default, rules, "proposed")


def _nice_up(x: float) -> float:
    """x rounded up to two significant digits (3.14e-6 -> 3.2e-6)."""
    exponent = math.floor(math.log10(x)) - 1
    # parsed from its decimal text, as a tolerance file is read back (26 * 1e-7 is 2.5999999999999997e-06)
    return float(f"{math.ceil(x / 10.0**exponent - 1e-9)}e{exponent}")
