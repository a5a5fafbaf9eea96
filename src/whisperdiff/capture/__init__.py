"""Capture: run an encoder or a decoder with every canonical op tapped. Backend runners behind one interface
per kind (runner.py); `make_runner` and `make_decoder_runner` pick one by --impl name through runner.py's
registry. Also the fault catalogue, `Tracer` for any implementation and `instrument` for `max.nn` models."""

from __future__ import annotations

from whisperdiff.capture.runner import RUNNERS, runner_class
from whisperdiff.errors import WhisperdiffError

IMPLS = tuple(RUNNERS["encoder"])
DECODER_IMPLS = tuple(RUNNERS["decoder"])


def make_runner(
    impl: str,
    model,
    device: str = "auto",
    dtype: str = "float32",
    taps: list[str] | None = None,
    faults=(),
    patchable: bool = False,
    bisecting: bool = False,
    stream: bool | None = None,
):
    """A runner for `impl`: a built-in one, or else a plugin (module.path:factory, file.py:factory, or an
    installed plugin's name). `faults` are encoder-side porting bugs (faults.py) to switch on.
    patchable: the runner's `run` also takes patch=(op, value) (activation patching, patch.py).
    bisecting: the MAX encoder streamed, its pieces outputting every default op, so that bisection's steps
    record what each needs from one compile (bisect.py).
    stream: the MAX encoder run piece by piece, one block's taps at a time (None: where the taps are large)."""
    encoder_faults = [f for f in faults if f.controls is not None]
    cls = runner_class("encoder", impl)
    if encoder_faults and not (cls and cls.takes_faults):
        raise WhisperdiffError(
            f"fault {encoder_faults[0].name!r} acts inside the MAX encoder; use --impl max "
            "(only input-side faults such as mel-frontend work with every implementation)"
        )
    if cls is None:
        from whisperdiff.capture.plugin import PluginRunner

        return PluginRunner(impl, model, device=device, dtype=dtype, taps=taps)
    # hook-based runners record only the taps asked for anyway; bisect makes them afresh per step
    options = {"bisecting": True} if bisecting and cls.takes_faults else {}
    if stream is not None and cls.takes_faults:  # hook-based runners record each op as it is computed anyway
        options["stream"] = stream
    return cls(model, device=device, dtype=dtype, taps=taps, faults=encoder_faults, patchable=patchable, **options)


def decoder_runner_class(impl: str, faults=()) -> type:
    """The decoder runner class for `impl` (torch, max, or a plugin: module:factory, file.py:factory),
    checked against the decoder `faults` asked for."""
    cls = runner_class("decoder", impl)
    if cls is None and ":" in impl:
        from whisperdiff.capture.plugin import PluginDecoderRunner

        cls = PluginDecoderRunner
    if cls is None:
        raise WhisperdiffError(
            f"unknown decoder implementation {impl!r}; use one of {', '.join(DECODER_IMPLS)}, "
            "module.path:factory or file.py:factory"
        )
    if faults and not cls.takes_faults:
        raise WhisperdiffError(
            "decoder faults are run-time switches of the MAX decoder graph; use --impl max to inject them"
        )
    return cls


def make_decoder_runner(impl: str, model, taps: list[str] | None = None, faults=(), device: str = "cpu"):
    """A decoder runner for `impl` (torch, max or a plugin); `faults` are decoder porting bugs (MAX only)."""
    cls = decoder_runner_class(impl, faults)
    if getattr(cls, "records_what_it_records", False):
        return cls(impl, model, taps=taps, faults=faults, device=device)
    return cls(model, taps=taps, faults=faults, device=device)
