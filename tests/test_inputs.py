"""The input boundary: every documented case of geomonitor._inputs.as_points."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geomonitor._inputs import as_points, compute_dtype


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
