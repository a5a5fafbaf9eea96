"""The one interface every backend runner implements (Polygraphy-style: running is separate from comparing).

A runner is built from a LoadedModel plus device, dtype and the list of canonical ops to tap, and
    facts() -> dict                      what it runs on, recorded in the trace manifest
    run(mel, record) -> dict             runs the encoder on mel [1, n_mels, 3000] float32, calling
                                         record(op_name, array) for each tapped op in encoder order, as
                                         soon as the value exists; returns timings for the manifest
    run(mel, record, patch=(op, value))  the same with that op's value replaced by `value` (canonical
                                         layout) for everything downstream: activation patching
    patch_points -> list[str]            the ops `patch` can name
`mel` itself is recorded by the caller: it is the input, not something a runner computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

Record = Callable[[str, np.ndarray], None]


class Runner(Protocol):
    impl: str

    def facts(self) -> dict: ...

    patch_points: list[str]

    def run(self, mel: np.ndarray, record: Record, patch: tuple[str, np.ndarray] | None = None) -> dict: ...
