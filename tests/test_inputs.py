"""The input boundary: every documented case of geomonitor._inputs.as_points."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomonitor._inputs import as_points, compute_dtype, unit_scale, unscale


@pytest.mark.parametrize(
    "dtype,expected",
    [(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.float32),
     (torch.float64, torch.float64), (torch.int32, torch.float32), (torch.int64, torch.float64),
     (torch.bool, torch.float32), (torch.uint8, torch.float32)],
)
def test_compute_dtype(dtype, expected):
    assert compute_dtype(dtype) == expected
    X = torch.ones(4, 2, dtype=dtype)
    assert as_points(X).X.dtype == expected


def test_numpy_input_becomes_tensor_with_same_values():
    X = np.arange(12, dtype=np.float64).reshape(6, 2)
    got = as_points(X)
    assert isinstance(got.X, torch.Tensor) and got.n_dropped == 0
    np.testing.assert_array_equal(got.X.numpy(), X)


def test_nonfinite_rows_are_dropped_and_counted():
    X = torch.arange(10.0).reshape(5, 2)
    X[1, 0], X[3, 1] = float("nan"), float("inf")
    got = as_points(X)
    assert got.n_dropped == 2
    torch.testing.assert_close(got.X, torch.tensor([[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]]))
    with pytest.raises(ValueError, match=r"X has 2 rows with NaN or Inf values"):
        as_points(X, drop_nonfinite=False)


def test_too_few_points_says_how_many_remain():
    X = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [2.0, 3.0]])
    with pytest.raises(ValueError, match=r"acts needs at least 3 points with finite values, got 2 \(1 rows"):
        as_points(X, name="acts")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"X must have shape \(N, D\), got shape"):
        as_points(torch.zeros(shape))


def test_complex_and_object_rejected():
    with pytest.raises(ValueError, match="must be real-valued"):
        as_points(torch.zeros(4, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="must be a numeric array, got dtype=object"):
        as_points(np.array([[object()] * 2] * 4))


def test_nonfinite_rows_raise_naming_the_rows():
    X = torch.zeros(9, 2)
    X[[1, 3, 4, 5, 6, 8], 0] = float("nan")
    with pytest.raises(ValueError, match=r"pts has 6 rows with NaN or Inf values \(rows 1, 3, 4, 5, 6, \.\.\.\); drop them first"):
        as_points(X, name="pts", drop_nonfinite=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 3.0, 1e19, 1e30])
def test_unit_scale_is_an_exact_power_of_two(dtype, scale):
    X = (torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale).to(dtype)
    Xs, e = unit_scale(X)
    amax = float(Xs.abs().max())
    assert 0.5 <= amax < 1.0 and Xs.dtype == dtype
    # exact: numpy's ldexp on float64 copies is the reference (float32 values are exact in float64)
    np.testing.assert_array_equal(Xs.double().numpy(), np.ldexp(X.double().numpy(), -e))
    np.testing.assert_array_equal(unscale(Xs, e).numpy(), X.numpy())


def test_unit_scale_extremes_and_zeros():
    big = torch.tensor([[3.0e38, -1.0], [1.0, 2.0]])  # near float32's maximum, and a small value
    Xs, e = unit_scale(big)
    assert e == 128 and Xs[0, 0] == 3.0e38 / 2.0**128 and Xs[0, 1] == -(2.0**-128)  # still exact
    tiny = torch.tensor([[1e-45, 0.0]])  # float32 subnormal: scaled up exactly
    Xs, e = unit_scale(tiny)
    assert e == math.frexp(float(tiny[0, 0]))[1] and float(Xs[0, 0]) == math.ldexp(float(tiny[0, 0]), -e)
    zeros = torch.zeros(3, 2)
    assert unit_scale(zeros)[1] == 0 and unit_scale(zeros)[0] is zeros


def test_unscale_overflow_raises_naming_the_dtype():
    with pytest.raises(ValueError, match=r"acts: distances exceed the largest torch.float32 \(3.4e\+38\); pass float64 input"):
        unscale(torch.tensor([1.0, 0.75]), 128, name="acts")
    with pytest.raises(ValueError, match=r"X: distances exceed the largest torch.float64 .*; rescale the input"):
        unscale(torch.tensor([1.0], dtype=torch.float64), 1024)
    assert float(unscale(torch.tensor([0.75]), 128)) == 0.75 * 2.0**128  # just below the top
