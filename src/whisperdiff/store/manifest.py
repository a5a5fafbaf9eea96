"""The trace manifest, typed: how a trace was made (provenance) and what it holds (its ops).

Frozen dataclasses, like openai-whisper's ModelDimensions and DecodingResult: a `Manifest` with one
record per section (ModelRecord, InputRecord, RunnerRecord, FaultRecord, OpRecord). There is one door
each way. `build_manifest` starts the manifest of every capture path (capture.session, the Tracer,
capture.decoder); `Manifest.from_json` is the one place a manifest is checked against the schema, by
the reader and by TraceWriter before it commits, so no capture path can write a trace the reader
would call damaged.

Provenance is required: without a `model` record (the weights digest) or an `input` record (the
input digest) nobody can tell whether two traces are comparable, so such a manifest is damaged.
The file on disk is schema "whisperdiff.trace" version 1, unchanged: real traces always had both.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.inputs.dims import dims_problem
from whisperdiff.provenance import versions
from whisperdiff.store.digest import KINDS, digest_kind

SCHEMA = "whisperdiff.trace"
SCHEMA_VERSION = 2  # 2: each op's digest is XXH3-128 (store/digest.py); 1 (SHA-256) is still read
MAX_MANIFEST_BYTES = 256 << 20
MAX_NDIM = 8
# dtypes a trace may hold (what runners record); anything else in a manifest is damage
DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
_TENSOR_FILE = re.compile(r"^tensors/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}\.npy$")
_SHA256 = KINDS["sha256"]  # the model's and the input's digests are SHA-256


class ManifestProblem(ValueError):
    """What is wrong with a manifest, as a phrase ("no 'input' record ..."); the caller names the file."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SURROGATE = re.compile("[\ud800-\udfff]")


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "holds a NUL character"
    if _SURROGATE.search(text):
        return "holds a lone surrogate (not valid Unicode)"
    return None


def _bad_string(value, where: str, depth: int = 0) -> str | None:
    """Strings a trace never holds: NUL characters and lone surrogates (they break paths and output)."""
    if depth > 32:
        return f"{where} is nested too deeply"
    if isinstance(value, str):
        problem = _string_problem(value)
        return None if problem is None else f"{where} {problem}"
    if isinstance(value, dict):  # keys first, then values
        items = [(lambda k=k: f"{where} key", k) for k in value]
        items += [(lambda k=k: f"{where}.{k}"[:80], v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(lambda i=i: f"{where}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for place, item in items:  # a place is spelled only for an item that is looked into (most are fine leaves)
        fine_leaf = depth < 32 and not isinstance(item, dict | list)
        if fine_leaf and not (isinstance(item, str) and _string_problem(item)):
            continue
        if (bad := _bad_string(item, place(), depth + 1)) is not None:
            return bad
    return None


class _Record:
    """A manifest section: typed fields for the keys whisperdiff reads, `extra` for the rest (kept as is)."""

    SECTION: ClassVar[str]
    TYPES: ClassVar[dict[str, type]]  # JSON key -> the type its value must have when present
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    WHY: ClassVar[str] = ""

    @classmethod
    def parse(cls, data: dict):
        for key in cls.REQUIRED:
            if data.get(key) is None:
                raise ManifestProblem(f"{cls.SECTION}.{key} is missing ({cls.WHY})")
        for key, kind in cls.TYPES.items():
            value = data.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise ManifestProblem(f"{cls.SECTION}.{key} is {_short(value)}, of the wrong type")
        extra = {k: v for k, v in data.items() if k not in cls.TYPES}
        nulls = frozenset(k for k in cls.TYPES if k in data and data[k] is None)
        return cls(**{key: data.get(key) for key in cls.TYPES}, extra=extra, nulls=nulls)

    def to_json(self) -> dict:
        out = {key: getattr(self, key) for key in self.TYPES if getattr(self, key) is not None or key in self.nulls}
        return {**out, **self.extra}


@dataclass(frozen=True)
class ModelRecord(_Record):
    id: str | None = None
    source: str | None = None
    dims: dict | None = None  # openai-whisper's ModelDimensions fields
    weights_sha256: str | None = None
    tensor_sha256: dict | None = None  # weight name -> sha256
    extra: dict = field(default_factory=dict)
    nulls: frozenset = frozenset()  # typed keys written as null (kept as null, as the file has them)

    SECTION = "model"
    TYPES = {"id": str, "source": str, "dims": dict, "weights_sha256": str, "tensor_sha256": dict}
    REQUIRED = ("weights_sha256",)
    WHY = "the weights digest says whether two traces ran the same weights"

    @classmethod
    def parse(cls, data: dict) -> ModelRecord:
        record = super().parse(data)
        if not _SHA256.match(record.weights_sha256):
            raise ManifestProblem("model.weights_sha256 is not a sha256 digest")
        if record.dims is not None and (why := dims_problem(record.dims)) is not None:
            raise ManifestProblem(f"model.dims: {why}")
        return record


@dataclass(frozen=True)
class InputRecord(_Record):
    kind: str | None = None  # "audio" or "mel"
    path: str | None = None  # a label: reading a trace never opens it
    sha256: str | None = None  # of the input file
    window: int | None = None
    n_windows: int | None = None
    frontend: str | None = None
    mel_sha256: str | None = None  # of the log-mel the encoder was fed
    extra: dict = field(default_factory=dict)
    nulls: frozenset = frozenset()  # typed keys written as null (kept as null, as the file has them)

    SECTION = "input"
    TYPES = {
        "kind": str,
        "path": str,
        "sha256": str,
        "window": int,
        "n_windows": int,
        "frontend": str,
        "mel_sha256": str,
    }
    REQUIRED = ("sha256",)
    WHY = "the input digest says whether two traces saw the same input"


@dataclass(frozen=True)
class RunnerRecord(_Record):
    device: str | None = None
    dtype: str | None = None
    encoder: str | None = None
    extra: dict = field(default_factory=dict)  # compile time, graph, observer effect... (runner facts)
    nulls: frozenset = frozenset()  # typed keys written as null (kept as null, as the file has them)

    SECTION = "runner"
    TYPES = {"device": str, "dtype": str, "encoder": str}


@dataclass(frozen=True)
class FaultRecord(_Record):
    name: str | None = None
    first_op: str | None = None
    description: str | None = None
    extra: dict = field(default_factory=dict)
    nulls: frozenset = frozenset()  # typed keys written as null (kept as null, as the file has them)

    SECTION = "injected"
    TYPES = {"name": str, "first_op": str, "description": str}


@dataclass(frozen=True)
class OpRecord:
    name: str
    file: str  # tensors/NAME.npy, inside the trace
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    digest: str  # of the array's bytes (store/digest.py)
    digest_kind: str  # "xxh3_128", or "sha256" in a schema-1 trace
    file_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "file": self.file,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "nbytes": self.nbytes,
        }
        if self.file_bytes is not None:
            out["file_bytes"] = self.file_bytes
        return {**out, self.digest_kind: self.digest, **self.extra}


# Top-level sections: the type each must have when present, and whether it must be there.
_TOP = {
    "impl": (str, True),
    "part": (str, False),
    "device": (str, False),
    "dtype": (str, False),
    "runner": (dict, False),
    "model": (dict, True),
    "input": (dict, True),
    "taps": (str, False),
    "injected": (list, False),
    "encoder": (dict, False),
    "versions": (dict, False),
    "transcript": (dict, False),
    "decoder": (dict, False),
    "run": (dict, False),
    "ops": (list, True),
}
_WHY_REQUIRED = {"model": ModelRecord.WHY, "input": InputRecord.WHY}
_PLAIN = ("part", "device", "dtype", "taps", "encoder", "versions", "transcript", "decoder", "run")  # kept as JSON


@dataclass(frozen=True, repr=False)
class Manifest(Mapping):
    """A trace's manifest. Typed access: `m.model.weights_sha256`, `m.input.sha256`, `m.ops[0].shape`.

    It is also a read-only Mapping of its JSON form (`m["model"]["id"]`, `m.get("taps")`): the analysis,
    gate and present layers read manifests that way in some 70 places, and golden sets and `show --json`
    copy its sections as JSON; new code should use the typed fields."""

    impl: str
    model: ModelRecord
    input: InputRecord
    ops: tuple[OpRecord, ...]
    part: str | None = None  # "decoder" for a decoder trace
    device: str | None = None
    dtype: str | None = None
    runner: RunnerRecord | None = None
    taps: str | None = None
    injected: tuple[FaultRecord, ...] | None = None  # () when none were planted
    encoder: dict | None = None  # decoder traces: the encoder whose output they attended to
    versions: dict | None = None
    transcript: dict | None = None
    decoder: dict | None = None  # decoder traces: tokens, argmax and margin per position
    run: dict | None = None  # when and how long
    extra: dict = field(default_factory=dict)  # keys this version does not know (kept, never read)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, m: dict) -> Manifest:
        """The manifest `m` (parsed JSON) as a Manifest; ManifestProblem says what is wrong with it."""
        if (bad := _bad_string(m, "manifest")) is not None:
            raise ManifestProblem(bad)
        for key, (kind, required) in _TOP.items():
            if key not in m:
                if required:
                    why = f" ({_WHY_REQUIRED[key]})" if key in _WHY_REQUIRED else ""
                    raise ManifestProblem(f"no {key!r} entry{why}")
                continue
            if not isinstance(m[key], kind) or (kind is str and not m[key]):
                raise ManifestProblem(
                    f"{key!r} is {_short(m[key])}, not a {'non-empty ' if kind is str else ''}{kind.__name__}"
                )
        injected = [] if "injected" in m else None
        for i, fault in enumerate(m.get("injected", [])):
            if not isinstance(fault, dict) or not isinstance(fault.get("name"), str):
                raise ManifestProblem(f"injected[{i}] is not a fault entry with a name")
            injected.append(FaultRecord.parse(fault))
        if "transcript" in m and not isinstance(m["transcript"].get("text"), str):
            raise ManifestProblem("transcript.text is not a string")
        known = set(_TOP) | {"schema", "schema_version"}
        return cls(
            impl=m["impl"],
            model=ModelRecord.parse(m["model"]),
            input=InputRecord.parse(m["input"]),
            ops=_parse_ops(m["ops"]),
            runner=RunnerRecord.parse(m["runner"]) if "runner" in m else None,
            injected=tuple(injected) if injected is not None else None,
            **{key: m.get(key) for key in _PLAIN},
            extra={k: v for k, v in m.items() if k not in known},
            schema_version=m.get("schema_version", SCHEMA_VERSION),
        )

    def to_json(self) -> dict:
        """The manifest as written to manifest.json."""
        out: dict[str, Any] = {"schema": SCHEMA, "schema_version": self.schema_version}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("extra", "schema_version") or value is None:
                continue
            if isinstance(value, tuple):
                out[f.name] = [item.to_json() for item in value]
            else:
                out[f.name] = value.to_json() if isinstance(value, _Record) else value
        ops = out.pop("ops")
        return {**out, **self.extra, "ops": ops}

    @property
    def is_decoder(self) -> bool:
        return self.part == "decoder"

    @property
    def nbytes(self) -> int:
        return sum(op.nbytes for op in self.ops)

    # The read-only Mapping of the JSON form (see the class docstring).
    @cached_property
    def _json(self) -> dict:
        return self.to_json()

    def __getitem__(self, key: str):
        return self._json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)

    def __repr__(self) -> str:
        return (
            f"Manifest(impl={self.impl!r}, model={self.model.id!r}, input={self.input.path!r}, "
            f"ops={len(self.ops)}{', part=' + repr(self.part) if self.part else ''})"
        )


def _parse_ops(ops: list) -> tuple[OpRecord, ...]:
    if not ops:
        raise ManifestProblem("the op list is empty (a trace holds at least one op)")
    names, files, records = set(), set(), []
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise ManifestProblem(f"ops[{i}] is {_short(op)}, not an op entry")
        name = op.get("name")  # a label, shown escaped; only `file` names something on disk
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ManifestProblem(f"ops[{i}] has no usable name ({_short(name)})")
        if name in names:
            raise ManifestProblem(f"op {name!r} is listed twice")
        names.add(name)
        file = op.get("file")
        if not isinstance(file, str) or not _TENSOR_FILE.match(file):
            raise ManifestProblem(
                f"op {name!r} points outside the trace or at no .npy file ({_short(file)}; a trace names tensors/OP.npy)"
            )
        if file in files:
            raise ManifestProblem(f"op {name!r} shares its file {file} with another op")
        files.add(file)
        shape = op.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(_is_int(d) and 0 <= d < 1 << 40 for d in shape)
        ):
            raise ManifestProblem(f"op {name!r} has shape {_short(shape)}, not a list of at most {MAX_NDIM} sizes >= 0")
        if op.get("dtype") not in DTYPES:
            raise ManifestProblem(f"op {name!r} has dtype {_short(op.get('dtype'))}, not one of {', '.join(DTYPES)}")
        nbytes = math.prod(shape) * np.dtype(op["dtype"]).itemsize
        if not _is_int(op.get("nbytes")) or op["nbytes"] != nbytes:
            raise ManifestProblem(
                f"op {name!r} says nbytes {_short(op.get('nbytes'))}, but {op['dtype']}{shape} is {nbytes} bytes"
            )
        if "file_bytes" in op and (
            not _is_int(op["file_bytes"]) or not nbytes <= op["file_bytes"] <= nbytes + (1 << 20)
        ):
            raise ManifestProblem(
                f"op {name!r} has file_bytes {_short(op['file_bytes'])}, which cannot hold {nbytes} bytes of data"
            )
        kind = digest_kind(op)
        if kind is None or not isinstance(op[kind], str) or not KINDS[kind].match(op[kind]):
            raise ManifestProblem(
                f"op {name!r} has no valid digest (one of {', '.join(KINDS)}; each op's bytes are verified against it)"
            )
        known = ("name", "file", "shape", "dtype", "nbytes", "file_bytes", *KINDS)
        records.append(
            OpRecord(
                name,
                file,
                tuple(shape),
                op["dtype"],
                nbytes,
                op[kind],
                kind,
                op.get("file_bytes"),
                {k: v for k, v in op.items() if k not in known},
            )
        )
    return tuple(records)


def parse_manifest(raw: bytes, path: Path, file: Path) -> Manifest:
    """The manifest of trace `path` from the bytes of its manifest `file`; every failure is a one-line error."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise WhisperdiffError(
            f"{file} is over {MAX_MANIFEST_BYTES >> 20} MB; the trace is damaged: re-run `whisperdiff trace`"
        )

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        m = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise WhisperdiffError(
            f"{file} is not valid JSON ({why}); the trace is damaged: re-run `whisperdiff trace`"
        ) from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        found = m.get("schema") if isinstance(m, dict) else None
        raise WhisperdiffError(f"{file} is not a whisperdiff trace manifest (schema {_short(found)})")
    version = m.get("schema_version")
    if not _is_int(version) or version < 1:
        raise WhisperdiffError(f"{file} has no valid schema_version; the trace is damaged: re-run `whisperdiff trace`")
    if version > SCHEMA_VERSION:
        raise WhisperdiffError(
            f"{path} was written by a newer whisperdiff (trace schema {version}, this one reads up to {SCHEMA_VERSION}); "
            "upgrade whisperdiff: pip install -U whisperdiff"
        )
    try:
        return Manifest.from_json(m)
    except ManifestProblem as e:
        raise WhisperdiffError(f"{file} is damaged: {e}; re-run `whisperdiff trace`") from None


def build_manifest(
    impl: str,
    *,
    model: dict,
    input: dict,
    runner: dict,
    taps: str,
    injected: list[dict] = (),
    device: str | None = None,
    dtype: str | None = None,
    **sections,
) -> dict:
    """The manifest every capture path starts from, before its ops: impl, where it ran, the model's and
    the input's provenance, the taps, the planted bugs, library versions.

    model: LoadedModel.manifest(); input: EncoderInput.provenance; runner: the runner's facts; sections:
    part-specific ones (part="decoder", encoder={...}). Returns the TraceWriter's draft, which the capture
    path completes as the run goes (timings, transcript); the writer checks it with Manifest.from_json
    before it commits."""
    draft: dict[str, Any] = {"impl": impl}
    if "part" in sections:
        draft["part"] = sections.pop("part")
    device = device if device is not None else runner.get("device")
    dtype = dtype if dtype is not None else runner.get("dtype")
    draft.update({k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    draft.update(runner=runner, model=model, input=input, taps=taps, injected=list(injected), **sections)
    draft["versions"] = versions()
    return draft
