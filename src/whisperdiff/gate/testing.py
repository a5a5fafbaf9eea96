"""For your own tests: assert that two traces agree op by op, with a message that lists the failing ops.

from whisperdiff.gate.testing import assert_traces_close

def test_my_port_matches_whisper():
    assert_traces_close("traces/torch-tiny.en-speech", "traces/my-port", "float32")
"""

from __future__ import annotations

from pathlib import Path

from whisperdiff.gate.check import check, check_golden
from whisperdiff.measure.tolerances import ToleranceSet, load_tolerances
from whisperdiff.store.trace import Trace


def assert_traces_close(
    a: str | Path | Trace,
    b: str | Path | Trace,
    tolerances: str | Path | ToleranceSet | None = None,
    *,
    golden: bool = False,
    replay: bool = False,
) -> None:
    """Raise AssertionError naming every op of `b` out of tolerance against `a` (a trace, or a golden
    set with golden=True). tolerances: a ToleranceSet, a TOML path, a shipped name, or None (float32)."""
    __tracebackhide__ = True  # pytest shows the failure at the caller's assert, not in here
    tol = tolerances if isinstance(tolerances, ToleranceSet) else load_tolerances(tolerances)
    result = check_golden(a, b, tol) if golden else check(a, b, tol, replay=replay)
    if result.passed:
        return
    lines = [result.summary(), *(f"  {f}" for f in result.failures[:20])]
    if len(result.failures) > 20:
        lines.append(f"  ... and {len(result.failures) - 20} more")
    lines += [f"  likely cause: {f.kind} at {f.op}: {f.message}" for f in result.findings[:1]]
    raise AssertionError("\n".join(lines))


def gpu_float32(linears: bool = True, attention: bool = False, convs: bool = False, operands: str = "tf32-trunc"):
    """A torch function mode that runs float32 as a GPU's tensor cores do, on CPU: the operands of every linear
    layer (linears), attention matmul (attention) or convolution (convs) reduced to tf32, products in float32.
    operands: "tf32-trunc" (the low 13 bits dropped) or "tf32" (rounded to nearest, as cuBLAS and cuDNN do).
    The defaults are MAX's float32 on an H200: they reproduce its error at all 48 ops that failed the float32
    tolerances to 1% (docs/gpu.md); torch on CUDA is convs=True, operands="tf32", linears=False. Trace a
    torch port inside it to see what a GPU's float32 does to it:

        with gpu_float32():
            wd.trace("torch", out="traces/tf32-like")
    """
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    from whisperdiff.analysis.replay import TENSOR_CORE, round_to

    if operands not in TENSOR_CORE:
        raise ValueError(f"operands: one of {', '.join(TENSOR_CORE)}, not {operands!r}")
    funcs = ({F.linear} if linears else set()) | ({F.conv1d} if convs else set())
    reduce = lambda t: round_to(t, operands)  # noqa: E731

    class GPUFloat32(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in funcs:
                args = [reduce(a) if isinstance(a, torch.Tensor) else a for a in args]
            if func is F.scaled_dot_product_attention and attention:
                q, k, v = (reduce(a) for a in args[:3])
                p = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1)
                return reduce(p) @ v
            return func(*args, **kwargs)

    return GPUFloat32()
