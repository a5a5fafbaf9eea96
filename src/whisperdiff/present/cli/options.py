"""Options more than one command takes, each defined once: typed aliases for single options, and option
groups (frozen dataclasses) that a command takes as one parameter, expanded into their options by
`with_groups`. Defaults come from the library's own types (`Tolerance`), never retyped."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated

import typer

from whisperdiff.errors import WhisperdiffError
from whisperdiff.measure.tolerances import Tolerance, load_tolerances

DEFAULT_LIMITS = Tolerance()

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
}


def _dtype(value: str) -> str:
    """--dtype with the usual short spellings (fp16, bf16, ...)."""
    if value.lower() not in DTYPES:
        raise typer.BadParameter(f"unknown dtype {value!r}; use float32, float16 (fp16), bfloat16 (bf16) or float64")
    return DTYPES[value.lower()]


def parse_dtypes(values: list[str] | None) -> list[str] | None:
    """A repeatable --dtype, each checked as --dtype is."""
    return [_dtype(v) for v in values] if values else values


def _device(value: str) -> str:
    if value.lower() not in ("auto", "cpu", "cuda", "gpu"):
        raise typer.BadParameter(f"unknown device {value!r}; use auto, cpu, cuda or gpu")
    return value.lower()


def known_faults(names: list[str] | None) -> list[str] | None:
    """--inject names checked up front, with a did-you-mean for a near miss."""
    import difflib

    from whisperdiff.capture.faults import FAULTS, INPUT_FAULTS

    for name in names or []:
        if name not in FAULTS and name not in INPUT_FAULTS:
            near = difflib.get_close_matches(name, [*FAULTS, *INPUT_FAULTS], n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise WhisperdiffError(f"--inject {name!r} is not a known fault; {hint}`whisperdiff faults` lists them")
    return names


IMPL_CHOICE = "<torch|max|MODULE:FACTORY|FILE.py:FACTORY>"

DeviceOpt = Annotated[
    str, typer.Option(metavar="<auto|cpu|cuda|gpu>", callback=_device, help="Where to run: auto, cpu or cuda (gpu).")
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        metavar="<float32|float16|bfloat16|float64>",
        callback=_dtype,
        help="Precision (fp32/fp16/bf16/fp64 also accepted; float64: torch only).",
    ),
]
InjectOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="FAULT", help="Plant a porting bug (repeatable); `whisperdiff faults` lists them."),
]
OutputAlias = Annotated[Path | None, typer.Option("--output", hidden=True)]  # the old spelling of --out
AudioOpt = Annotated[Path | None, typer.Option(help="Audio file (first 30 s window). Default: the shipped clip.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="SPEC",
        help="Model spec: default (embedded tiny.en), a Whisper name, a .pt path, a CTranslate2 dir, or random:PRESET[,seed=N][,dim=V]",
    ),
]
ReferenceArg = Annotated[Path, typer.Argument(metavar="A", help="Reference trace (e.g. --impl torch).")]
CandidateArg = Annotated[Path, typer.Argument(metavar="B", help="Candidate trace (e.g. your port).")]
RenameOpt = Annotated[
    Path | None,
    typer.Option(
        help='JSON/TOML rules mapping B\'s op names to canonical ones: {"rename": {"layers.*.q": "blocks.*.attn.q"}}.'
    ),
]
TranscribeOpt = Annotated[
    bool,
    typer.Option(
        help="Decode both outputs with openai-whisper's decoder (when the traces carry no transcript) and compare the texts."
    ),
]


RerunImplOpt = Annotated[
    str | None,
    typer.Option(
        metavar=IMPL_CHOICE,
        help="What re-runs B (patch; report --patch): torch, max, module:factory or file.py:factory (default: B's impl if torch or max; a trace never names code to run).",
    ),
]


def tolerance_file_option(help: str):
    """--tolerances/-t: the commands that take it differ in what it replaces, so each says so in `help`."""
    return Annotated[str | None, typer.Option("--tolerances", "-t", metavar="<float32|half|tf32|FILE.toml>", help=help)]


LimitsFileOpt = tolerance_file_option(
    "Per-op limits from a TOML file or a shipped one (float32, half, tf32); replaces the four options above."
)
CheckFileOpt = tolerance_file_option(
    "TOML tolerance file, or a shipped one: float32 (default), half, tf32 (a GPU's float32)."
)


def option_group(cls):
    """A frozen dataclass of options (each field an Annotated typer option with its default) that commands
    take as one parameter; see `with_groups`."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls.__option_group__ = True
    return cls


@option_group
class EncoderRun:
    """Which encoder runs, on what, with which planted bugs (trace, transcribe)."""

    impl: Annotated[
        str,
        typer.Option(
            metavar=IMPL_CHOICE,
            help="Implementation to run: torch (openai-whisper reference), max (MAX Graph encoder), or your own (a factory).",
        ),
    ] = "torch"
    model: ModelOpt = None
    device: DeviceOpt = "auto"
    dtype: DtypeOpt = "float32"
    taps: Annotated[
        str,
        typer.Option(
            metavar="<default|all|output|GLOBS>",
            help="default (all but attention probabilities), all, output (ln_post only, the fastest), or comma-separated names/globs.",
        ),
    ] = "default"
    inject: InjectOpt = None

    def session(self, on_status):
        """The library's Session for these options (the model loaded, the graph compiled or loaded)."""
        from whisperdiff.capture.session import Session

        inject = known_faults(self.inject)
        return Session(
            self.impl,
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            taps=self.taps,
            inject=inject,
            on_status=on_status,
        )


@option_group
class Pairing:
    """How B is paired with A: op renames, the model for the replay, the replay itself, --force."""

    rename: RenameOpt = None
    model: ModelOpt = None
    replay: Annotated[
        bool, typer.Option(help="Replay each op on B's inputs to split introduced from inherited error.")
    ] = True
    force: Annotated[
        bool,
        typer.Option("--force", help="Go on even when the traces are not comparable (other weights, input or dims)."),
    ] = False
    audio: Annotated[
        Path | None,
        typer.Option(
            "--audio",
            help="The traced clip (checked by sha256): where the log-mels differ, each usual frontend variant is "
            "replayed on it. The shipped clip needs no flag.",
        ),
    ] = None


@option_group
class Limits:
    """When an op diverges: one set of limits for every op, or a tolerance file with per-op rules."""

    min_cosine: Annotated[float, typer.Option(help="An op diverges below this cosine.")] = DEFAULT_LIMITS.min_cosine
    max_rel_l2: Annotated[float, typer.Option(help="An op diverges above this relative L2 error.")] = (
        DEFAULT_LIMITS.max_rel_l2
    )
    atol: Annotated[float, typer.Option(help="Absolute part of the element-wise mismatch test.")] = DEFAULT_LIMITS.atol
    rtol: Annotated[float, typer.Option(help="Relative part of the element-wise mismatch test.")] = DEFAULT_LIMITS.rtol
    tolerances: LimitsFileOpt = None

    def tolerance(self):
        """The library's Tolerance (or ToleranceSet, from --tolerances) these options ask for."""
        if self.tolerances is not None:
            return load_tolerances(self.tolerances)
        return Tolerance(min_cosine=self.min_cosine, max_rel_l2=self.max_rel_l2, atol=self.atol, rtol=self.rtol)


def with_groups(command):
    """Let typer see each option group parameter of `command` as the group's own options, and call
    `command` with one object of the group built from them."""
    hints = typing.get_type_hints(command, include_extras=True)
    groups, params = {}, []
    for p in inspect.signature(command).parameters.values():
        kind = hints.get(p.name, p.annotation)
        if getattr(kind, "__option_group__", False):
            fields = dataclasses.fields(kind)
            field_hints = typing.get_type_hints(kind, include_extras=True)
            groups[p.name] = (kind, [f.name for f in fields])
            params += [
                inspect.Parameter(f.name, p.KEYWORD_ONLY, default=f.default, annotation=field_hints[f.name])
                for f in fields
            ]
        else:
            params.append(p.replace(kind=p.KEYWORD_ONLY, annotation=kind))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: two options share a name in {names}")

    @functools.wraps(command)
    def expanded(**options):
        for name, (group, fields) in groups.items():
            options[name] = group(**{f: options.pop(f) for f in fields})
        return command(**options)

    expanded.__signature__ = inspect.Signature(params)
    expanded.__annotations__ = {p.name: p.annotation for p in params}
    return expanded
