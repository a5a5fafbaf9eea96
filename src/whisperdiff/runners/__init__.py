"""Backend runners behind one interface (see base.py). `make_runner` picks one by --impl name."""

from __future__ import annotations

from ..errors import WhisperdiffError

IMPLS = ("torch", "max")


def make_runner(impl: str, model, device: str = "auto", dtype: str = "float32", taps: list[str] | None = None):
    if impl == "torch":
        from .torch_runner import TorchRunner

        return TorchRunner(model, device=device, dtype=dtype, taps=taps)
    if impl == "max":
        from .max_runner import MaxRunner

        return MaxRunner(model, device=device, dtype=dtype, taps=taps)
    raise WhisperdiffError(f"unknown implementation {impl!r}; available: {', '.join(IMPLS)}")
