"""The interfaces every backend runner implements (Polygraphy-style: running is separate from comparing),
and the one registry that picks a runner class by --impl name, per kind (encoder, decoder).

An encoder runner (`Runner`) is built as Cls(model, *, device, dtype, taps, faults, patchable) and has
    facts() -> dict                      what it runs on, recorded in the trace manifest
    run(mel, record) -> dict             runs the encoder on mel [1, n_mels, 3000] float32, calling
                                         record(op_name, array) for each tapped op in encoder order, as
                                         soon as the value exists; returns timings for the manifest
    run(mel, record, patch=(op, value))  the same with that op's value replaced by `value` (canonical
                                         layout) for everything downstream: activation patching
    patch_points -> list[str]            the ops `patch` can name
`mel` itself is recorded by the caller: it is the input, not something a runner computes.

A decoder runner (`DecoderRunner`) is built as Cls(model, *, taps, faults, device) and has
    facts() -> dict                      as above
    start(features)                      a new sequence attending to this encoder output [1, n_audio_ctx, C]
    step(tokens, record=None) -> logits  tokens [1, L] at the next L positions -> [1, L, n_vocab]; calls
                                         record(op, value) with this step's value of each tapped op
    close()                              drops the sequence's state (caches, hooks)
capture/decoder.py concatenates the steps along the token-position axis.

Both kinds say whether they take injected faults (`takes_faults`): faults are run-time switches of the
MAX graphs, so asking another runner for one is an error the factories report in one line.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

Record = Callable[[str, np.ndarray], None]


@runtime_checkable
class Runner(Protocol):
    impl: str
    patch_points: list[str]
    takes_faults: bool

    def facts(self) -> dict: ...

    def run(self, mel: np.ndarray, record: Record, patch: tuple[str, np.ndarray] | None = None) -> dict: ...


@runtime_checkable
class DecoderRunner(Protocol):
    impl: str
    takes_faults: bool

    def facts(self) -> dict: ...

    def start(self, features: np.ndarray) -> None: ...

    def step(self, tokens: np.ndarray, record: Record | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


# --impl name -> "module:class", imported only when picked (torch and max are slow to import).
RUNNERS: dict[str, dict[str, str]] = {
    "encoder": {
        "torch": "whisperdiff.capture.torch_runner:TorchRunner",
        "max": "whisperdiff.capture.max_runner:MaxRunner",
    },
    "decoder": {
        "torch": "whisperdiff.capture.torch_decoder:TorchDecoderRunner",
        "max": "whisperdiff.capture.max_decoder:MaxDecoderRunner",
    },
}
PROTOCOLS = {"encoder": Runner, "decoder": DecoderRunner}


def runner_class(kind: str, impl: str) -> type | None:
    """The built-in runner class of this kind for --impl `impl`; None when it names none (a plugin)."""
    where = RUNNERS[kind].get(impl)
    if where is None:
        return None
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def missing_members(cls: type, protocol: type) -> list[str]:
    """What `cls` lacks of `protocol`, checked on the class itself (no instance, so no model): each
    method with the protocol's parameters, each attribute as a class attribute or annotation."""
    missing = []
    annotations = {k for c in cls.__mro__ for k in getattr(c, "__annotations__", {})}
    for name in protocol.__annotations__:
        if not hasattr(cls, name) and name not in annotations:
            missing.append(name)
    for name, method in vars(protocol).items():
        if name.startswith("_") or not callable(method):
            continue
        actual = getattr(cls, name, None)
        if not callable(actual):
            missing.append(f"{name}()")
            continue
        wanted = list(inspect.signature(method).parameters)
        have = inspect.signature(actual).parameters
        if any(p not in have for p in wanted):
            missing.append(f"{name}({', '.join(wanted[1:])})")
    return missing
