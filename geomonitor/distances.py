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

Example:
    >>> X = torch.randn(1000, 32)
    >>> d, idx = knn(X, k=2)          # (1000, 2) distances, ascending; self excluded
"""
from __future__ import annotations

import torch

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


def pairwise_distances(X: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Dense (N, N) Euclidean distance matrix with an exact zero diagonal and exact symmetry.

    Use only where N x N fits in memory (landmark sets, small clouds). Cost O(N^2 D).
    """
    X = X - X.mean(dim=0, keepdim=True)
    n = X.shape[0]
    cs = chunk_size or auto_chunk_size(n, n)
    x_sq = (X * X).sum(dim=1)
    out = torch.empty(n, n, dtype=X.dtype, device=X.device)
    for s in range(0, n, cs):
        out[s : s + cs] = sq_dists(X[s : s + cs], X, x_sq).sqrt_()
    out = 0.5 * (out + out.T)
    out.fill_diagonal_(0.0)
    return out


def knn(
    X: torch.Tensor, k: int, *, chunk_size: int | None = None, refine: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every row of ``X`` among the other rows.

    Args:
        X: (N, D) floating tensor; any device. Compute happens in ``X.dtype``.
        k: neighbours per point, ``1 <= k < N``.
        chunk_size: rows per block; by default sized to ~128 MiB per block.
        refine: recompute the selected distances directly (see module docstring).

    Returns:
        ``(dist, idx)``, both (N, k): distances ascending along dim 1, and neighbour indices.
        A point never counts as its own neighbour; duplicates appear at distance 0.

    Cost: O(N^2 D) flops, O(chunk_size * N) extra memory.
    """
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must satisfy 1 <= k < N={n}, got k={k}")
    X = X - X.mean(dim=0, keepdim=True)
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
    return dists, index
