"""One value a port computes, as a capture records it (MAX: graph_capture.py; torch: torch_capture.py):
what made it, its shape, where in the port's modules and source it was made. automap reads these."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Captured:
    """One value the graph computes (the numbers come later, from the compiled graph's outputs)."""

    index: int  # graph order
    key: str  # "layers.0.attention.wq" for a module's output, else "layers.0.attention:reshape#1"
    op: str  # the MAX op that made it: "matmul", "add", "gelu", "layer_norm", ...
    shape: tuple  # ints, or strings for symbolic dimensions
    dtype: str
    module: str  # module path ("" outside any module)
    where: str  # the user's file:line that made it
    outputs_of: list[str] = field(default_factory=list)  # modules that returned this value
    inputs_of: list[str] = field(default_factory=list)  # modules that were called with it
    from_weight: bool = False  # one operand is a weight (a bias add, the positional add, a projection)
    operands: list[int] = field(default_factory=list)  # indices of the activations it reads (dataflow)
    weight_rank: int = 0  # of its weight operands, the most axes longer than 1: 1 a bias or gamma, 2+ a matrix
    weight_only: bool = False  # computed from weights and constants alone (a transposed weight), not activations
    value: object = field(default=None, repr=False)  # the graph's TensorValue

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def describe(self) -> dict:
        return {"key": self.key, "op": self.op, "shape": list(self.shape), "module": self.module, "where": self.where}


def short_path(filename: str) -> str:
    """A file as the user knows it: relative to the working directory, or to site-packages."""
    if "site-packages" + os.sep in filename:
        return filename.split("site-packages" + os.sep, 1)[1]
    rel = os.path.relpath(filename)
    return filename if rel.startswith(".." + os.sep) else rel


def rank(shape) -> int:
    """Axes longer than 1 (a symbolic axis counts): 0 a scalar, 1 a vector, 2+ a matrix or filter."""
    return sum(1 for d in shape if not isinstance(d, int) or d > 1)


def value_key(counts: dict, module: str, op: str) -> str:
    """The key of the next value `op` makes in `module`: `module:op#n` (the n-th such), or `op#n` outside any
    module; counts (module, op) -> how many so far, updated. A module's output is later keyed by its path."""
    n = counts.get((module, op), 0)
    counts[(module, op)] = n + 1
    return f"{module}:{op}#{n}" if module else f"{op}#{n}"


def to_numpy(x) -> np.ndarray:
    """The numbers of a MAX buffer (brought to the host first where it lives on an accelerator), a torch
    tensor (as float32) or anything array-like."""
    if hasattr(x, "to_numpy"):
        device = getattr(x, "device", None)
        if device is not None and not getattr(device, "is_host", True):
            from max.driver import CPU

            x = x.to(CPU())
        return x.to_numpy()
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)
