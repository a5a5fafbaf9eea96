"""A float32 run whose matmuls or convolutions run as TF32, as a GPU computes float32 by default.

On an H200 (docs/gpu.md) MAX's float32 encoder failed the float32 tolerances from blocks.0.attn.q on
(48 of 55 ops), and torch on CUDA, whose cuDNN convolutions run as TF32, from conv1.gelu on. Here
openai-whisper runs on CPU with those ops' operands rounded to TF32 (products in float32); compare must
call it precision in TF32 where the error starts, with no other finding.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import whisperdiff as wd
from whisperdiff.analysis.replay import round_to

pytestmark = pytest.mark.slow


class TF32(TorchFunctionMode):
    """Linear layers and attention (matmuls=True), or convolutions (convs=True), with TF32 operands."""

    def __init__(self, matmuls: bool, convs: bool):
        super().__init__()
        self.funcs = {F.linear} if matmuls else set()
        self.funcs |= {F.conv1d} if convs else set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.funcs:
            args = [round_to(a, "tf32") if isinstance(a, torch.Tensor) else a for a in args]
        if func is F.scaled_dot_product_attention and F.linear in self.funcs:
            q, k, v = (round_to(a, "tf32") for a in args[:3])
            p = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1)
            return round_to(p, "tf32") @ v
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "matmuls, convs, first, source",
    [
        (True, False, "blocks.0.attn.q", "blocks.0.attn.q"),  # MAX on the GPU
        (False, True, "conv1.gelu", "conv1"),  # torch on CUDA: cuDNN's TF32 convolutions
    ],
)
def test_tf32_is_named_precision_where_the_error_starts(
    default_trace, tiny_en, tmp_path, matmuls, convs, first, source
):
    with TF32(matmuls, convs):
        gpu_like = wd.trace("torch", model=tiny_en, out=tmp_path / "tf32")
    check = wd.check(default_trace, gpu_like, wd.load_tolerances("float32"))
    assert not check.passed and check.first_failure == first, check
    assert wd.check(default_trace, gpu_like, wd.load_tolerances("tf32")).passed  # the GPU's float32 gate
    result = wd.compare(default_trace, gpu_like, model=tiny_en)
    assert result.first_divergence == first
    assert {f.kind for f in result.findings if f.severity != "info"} == {"precision"}, result.findings[:3]
    top = result.findings[0]
    assert top.op == source and "tf32" in top.message, top.message
    if source != first:  # conv1's own error is within its limit; GELU magnifies it past conv1.gelu's
        assert f"passes the limit at {first}" in top.message, top.message
    if matmuls:  # every later matmul adds its own TF32 error: the same finding, the attention's matmuls too
        later = {"blocks.0.attn.wv", "blocks.3.attn.wv", "blocks.3.mlp.fc2"}
        assert later <= {top.op, *top.also_at}, sorted(top.also_at)
