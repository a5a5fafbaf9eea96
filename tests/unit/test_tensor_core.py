"""TF32, a tensor core's float32 operand: rounded to nearest (cuBLAS) or truncated (MAX on an H200)."""

import pytest
import torch

from whisperdiff.analysis.replay import matmul_in, round_to


def test_tf32_keeps_ten_mantissa_bits_rounded_or_truncated():
    ulp = 2.0**-10  # of a value in [1, 2)
    x = torch.tensor([1 + 0.75 * ulp, 1 + 0.25 * ulp, -(1 + 0.75 * ulp), 3.0], dtype=torch.float32)
    assert round_to(x, "tf32").tolist() == [1 + ulp, 1.0, -(1 + ulp), 3.0]
    assert round_to(x, "tf32-trunc").tolist() == [1.0, 1.0, -1.0, 3.0]  # toward zero, whatever the sign
    tie = torch.tensor([1 + 0.5 * ulp, 1 + 1.5 * ulp])  # halfway: to the even neighbour
    assert round_to(tie, "tf32").tolist() == [1.0, 1 + 2 * ulp]


def test_truncation_shrinks_a_matmul_where_rounding_does_not():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=g), torch.randn(256, 64, generator=g)
    exact = (a.double() @ b.double()).norm()
    truncated = matmul_in(a, b, "tf32-trunc").double().norm() / exact - 1
    rounded = matmul_in(a, b, "tf32").double().norm() / exact - 1
    assert -1.2e-3 < truncated < -4e-4 and abs(rounded) < 1e-4, (truncated, rounded)


@pytest.mark.parametrize("dtype", ["tf32", "tf32-trunc"])
def test_a_tf32_matmul_keeps_its_float32_product(dtype):
    a = torch.full((1, 3), 1 + 2.0**-10)  # exact in tf32: the product's bits past tf32's survive
    assert matmul_in(a, a.T, dtype).item() == pytest.approx(3 * (1 + 2.0**-10) ** 2, rel=1e-7)
