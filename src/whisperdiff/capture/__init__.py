"""Capture: run an encoder with every canonical op tapped. Backend runners behind one interface (runner.py);
`make_runner` picks one by --impl name. Also the fault catalogue, `Tracer` for any implementation and
`instrument` for `max.nn` models."""

from __future__ import annotations

from whisperdiff.errors import WhisperdiffError

IMPLS = ("torch", "max")


def make_runner(
    impl: str,
    model,
    device: str = "auto",
    dtype: str = "float32",
    taps: list[str] | None = None,
    faults=(),
    patchable: bool = False,
):
    """A runner for `impl`; `faults` are encoder-side porting bugs (faults.py) to switch on.
    patchable: the runner's `run` also takes patch=(op, value) (activation patching, patch.py)."""
    encoder_faults = [f for f in faults if f.controls is not None]
    if encoder_faults and impl != "max":
        raise WhisperdiffError(
            f"fault {encoder_faults[0].name!r} acts inside the MAX encoder; use --impl max "
            "(only input-side faults such as mel-frontend work with every implementation)"
        )
    if impl == "torch":
        from whisperdiff.capture.torch_runner import TorchRunner

        return TorchRunner(model, device=device, dtype=dtype, taps=taps)  # torch hooks can always patch
    if impl == "max":
        from whisperdiff.capture.max_runner import MaxRunner

        return MaxRunner(model, device=device, dtype=dtype, taps=taps, faults=encoder_faults, patchable=patchable)
    from whisperdiff.capture.plugin import PluginRunner  # module.path:factory, file.py:factory, or an installed plugin

    return PluginRunner(impl, model, device=device, dtype=dtype, taps=taps)
