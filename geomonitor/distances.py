"""Euclidean distances by chunked matrix products, on the input's device.

The squared distance between rows is expanded as
``||a - b||^2 = ||a||^2 + ||b||^2 - 2 <a, b>``, so a block of rows against all rows costs one
matrix product (the O(N^2 D) floor of exact neighbour search). Rows are processed in chunks
so that N = 50,000 never materialises an N x N matrix: peak extra memory is
``chunk_size * N`` floats.

The expansion loses relative precision for nearby points far from the origin, so the cloud
is centred first and the k nearest neighbours it selects are *refined*: their distances are
recomputed directly as ``||a - b||`` (O(N k D), negligible). Selection can only err where two
candidates are within rounding of each other, which changes no estimate.

Input. :func:`knn` and :func:`pairwise_distances` take ``X`` through the same boundary as the
estimators (:func:`geomonitor._inputs.as_points`): numpy arrays and other array-likes are
accepted, integers and bool are computed in float32 (64-bit integers in float64),
float16/bfloat16 in float32, and the result has that compute dtype. A row with NaN or Inf is
a ``ValueError`` naming the rows: the results are per row, so dropping rows (as the
estimators do, counting them) would silently renumber them. Before any square is taken the
cloud is scaled by a power of two (:func:`geomonitor._inputs.unit_scale`, exact), so float32
clouds with values up to float32's maximum or down to 1e-30 give the distances a float64
computation gives, to float32 rounding; distances beyond the range of the compute dtype
(float32 clouds above ~1e38 / sqrt(D), float64 ones near 1e308) raise ``ValueError``.

Example:
    >>> X = torch.randn(1000, 32)
    >>> d, idx = knn(X, k=2)          # (1000, 2) distances, ascending; self excluded
"""
from __future__ import annotations

from typing import Any

import torch

from geomonitor._checks import positive_int
from geomonitor._inputs import as_points, unit_scale, unscale

__all__ = ["auto_chunk_size", "knn", "pairwise_distances", "sq_dists"]

_CHUNK_ELEMENTS = 1 << 25  # ~128 MiB of float32 per distance block


def auto_chunk_size(n_rows: int, n_cols: int, budget: int = _CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that a (chunk, n_cols) block holds at most ``budget`` elements."""
    return max(1, min(n_rows, budget // max(1, n_cols)))


def sq_dists(A: torch.Tensor, B: torch.Tensor, B_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances (|A|, |B|) by one matrix product, clamped at 0."""
    a_sq = (A * A).sum(dim=1, keepdim=True)
    b_sq = (B * B).sum(dim=1) if B_sq is None else B_sq
    return (a_sq + b_sq - 2.0 * (A @ B.T)).clamp_min_(0.0)


def _centred_unit(X: Any) -> tuple[torch.Tensor, int]:
    """The validated cloud (see module docstring), scaled by 2^-e and centred, and e."""
    P = as_points(X, min_points=1, drop_nonfinite=False).X
    Xs, e = unit_scale(P)
    mean = Xs.mean(dim=0, keepdim=True)
    return (Xs.sub_(mean) if e else Xs - mean), e  # with e != 0, Xs is a copy of our own


def pairwise_distances(X: Any, *, chunk_size: int | None = None) -> torch.Tensor:
    """Dense (N, N) Euclidean distance matrix with an exact zero diagonal and exact symmetry.

    Args:
        X: (N, D) point cloud, N >= 1: a tensor on any device, or a numpy array; see the
            module docstring for dtypes.
        chunk_size: rows per block; by default sized to ~128 MiB per block.

    Returns:
        (N, N) tensor in the compute dtype, on ``X``'s device.

    Raises:
        ValueError: ``X`` not (N, D), complex, empty or with NaN/Inf rows; a bad
            ``chunk_size``; distances beyond the compute dtype's range.

    Use only where N x N fits in memory (landmark sets, small clouds). Cost O(N^2 D).
    """
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True)
    X, exponent = _centred_unit(X)
    n = X.shape[0]
    cs = chunk_size or auto_chunk_size(n, n)
    x_sq = (X * X).sum(dim=1)
    out = torch.empty(n, n, dtype=X.dtype, device=X.device)
    for s in range(0, n, cs):
        out[s : s + cs] = sq_dists(X[s : s + cs], X, x_sq).sqrt_()
    out = 0.5 * (out + out.T)
    out.fill_diagonal_(0.0)
    return unscale(out, exponent)


def knn(
    X: Any, k: int, *, chunk_size: int | None = None, refine: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every row of ``X`` among the other rows.

    Args:
        X: (N, D) point cloud: a tensor on any device, or a numpy array; see the module
            docstring for dtypes and NaN/Inf rows. Compute happens in the compute dtype.
        k: neighbours per point, an int with ``1 <= k < N``.
        chunk_size: rows per block; by default sized to ~128 MiB per block.
        refine: recompute the selected distances directly (see module docstring).

    Returns:
        ``(dist, idx)``, both (N, k) on ``X``'s device: distances ascending along dim 1 (in
        the compute dtype), and neighbour indices (int64). A point never counts as its own
        neighbour; duplicates appear at distance 0.

    Raises:
        ValueError: ``X`` not (N, D), complex, empty or with NaN/Inf rows; ``k`` not an int
            in [1, N); a bad ``chunk_size``; distances beyond the compute dtype's range.

    Cost: O(N^2 D) flops, O(chunk_size * N) extra memory.
    """
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True)
    X, exponent = _centred_unit(X)
    n = X.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an int with 1 <= k < N={n}, got k={k!r}")
    cs = chunk_size or auto_chunk_size(n, n)
    x_sq = (X * X).sum(dim=1)
    dists = torch.empty(n, k, dtype=X.dtype, device=X.device)
    index = torch.empty(n, k, dtype=torch.long, device=X.device)
    for s in range(0, n, cs):
        e = min(s + cs, n)
        # ||a||^2 is constant along a row, so it cannot change the row's ranking: select on
        # ||b||^2 - 2<a, b> from one fused product and add ||a||^2 back on the k winners only.
        block = torch.addmm(x_sq, X[s:e], X.T, beta=1.0, alpha=-2.0)
        block[torch.arange(e - s, device=X.device), torch.arange(s, e, device=X.device)] = float("inf")
        d2, idx = torch.topk(block, k, dim=1, largest=False, sorted=True)
        del block
        dists[s:e] = (d2 + x_sq[s:e, None]).clamp_min_(0.0).sqrt_()
        index[s:e] = idx
    if refine:
        sub = auto_chunk_size(n, k * X.shape[1])
        for s in range(0, n, sub):
            idx = index[s : s + sub]
            d = (X[s : s + sub].unsqueeze(1) - X[idx]).norm(dim=2)
            d, order = d.sort(dim=1)
            dists[s : s + sub], index[s : s + sub] = d, idx.gather(1, order)
    return unscale(dists, exponent), index
