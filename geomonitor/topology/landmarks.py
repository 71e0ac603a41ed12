"""Farthest-point (maxmin) landmark sampling with its covering radius.

Greedy farthest-point sampling (Gonzalez, "Clustering to minimize the maximum intercluster
distance", Theor. Comput. Sci. 38, 1985; de Silva & Carlsson, "Topological estimation using
witness complexes", SPBG 2004): the first landmark is drawn uniformly at random from
``generator``, every next one is the point farthest from the landmarks chosen so far. After m
steps the covering (Hausdorff) radius

    eps = max_x min_l ||x - l||

is the distance the next landmark would have had, and is returned with the landmarks. The
subset is a 2-approximation of the optimal m-centre radius, and by the stability of Rips
persistence (Chazal, de Silva & Oudot, "Persistence stability for geometric complexes",
Geom. Dedicata 173, 2014) the bottleneck distance between the landmark diagram and the full
diagram is at most 2 * eps.

Cost: O(m N D) flops (one matrix-vector product per landmark; O(m N) with the Gram matrix),
O(N) extra memory; all on ``X.device``. On the CPU the loop runs on numpy views; on
accelerators it launches kernels without waiting for them, with one host check at the end.

Input. ``X`` passes the boundary of :func:`geomonitor.knn`
(:func:`geomonitor._inputs.as_points`): numpy arrays and other array-likes are accepted,
integers and bool are computed in float32 (64-bit integers in float64), float16/bfloat16 in
float32; complex input, a shape other than (N, D) or N = 0 is a ``ValueError``, and so is a
row with NaN or Inf (naming the rows): the landmarks are row indices, so dropping rows would
renumber them. The cloud is scaled by a power of two first
(:func:`geomonitor._inputs.unit_scale`, exact), so float32 clouds with values near 1e30
pick the landmarks a float64 computation picks, and the radius is scaled back.

Example:
    >>> X = torch.randn(5000, 64)
    >>> idx, eps = farthest_point_sampling(X, 300, generator=torch.Generator().manual_seed(0))
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geomonitor._inputs import as_points, unit_scale, unscale

__all__ = ["farthest_point_sampling"]


def farthest_point_sampling(
    X: Any,
    n_landmarks: int,
    *,
    generator: torch.Generator | None = None,
    gram_matrix: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, float]:
    """Maxmin landmarks of ``X`` and their covering radius.

    Args:
        X: (N, D) point cloud with finite values: a tensor on any device, or a numpy array
            (see the module docstring for dtypes).
        n_landmarks: landmarks wanted, >= 1. If it is >= N, every point is returned and the
            radius is 0.
        generator: draws the first landmark (on the generator's device); default a fresh
            default-seeded ``torch.Generator()`` so results are reproducible.
        gram_matrix: ``geomonitor.topology.mst.gram(X - X.mean(0))`` if the caller has it
            (in the compute dtype and the units of ``X``); each step then reads one row
            instead of a matrix-vector product.

    Returns:
        ``(idx, eps)``: (m,) long tensor of row indices on ``X.device`` and the covering radius
        ``eps`` as a float. Sampling stops early (m < n_landmarks) once every point lies at
        distance 0 from a landmark, e.g. a cloud with fewer distinct points than landmarks.

    Raises:
        ValueError: a bad ``n_landmarks``; ``X`` complex, not (N, D), empty or with NaN/Inf
            rows; a radius beyond the compute dtype's range.
    """
    if isinstance(n_landmarks, bool) or not isinstance(n_landmarks, int) or n_landmarks < 1:
        raise ValueError(f"n_landmarks must be an int >= 1, got {n_landmarks!r}")
    X, e = unit_scale(as_points(X, min_points=1, drop_nonfinite=False).X)
    if gram_matrix is not None and e:  # the caller's Gram matrix, in the units of the scaled X
        gram_matrix = (unscale(gram_matrix[0], -2 * e), unscale(gram_matrix[1], -2 * e))
    n = X.shape[0]
    if n_landmarks >= n:
        return torch.arange(n, device=X.device), 0.0
    if generator is None:
        generator = torch.Generator()
    first = int(torch.randint(n, (1,), generator=generator, device=generator.device))
    Xc = X.detach() - X.detach().mean(dim=0, keepdim=True)
    G, x_sq = gram_matrix if gram_matrix is not None else (None, (Xc * Xc).sum(dim=1))
    # below ``tiny`` an expanded squared distance may be pure rounding: the exact loop then
    # switches to direct differences (only near-duplicate clouds ever get there)
    tiny = 64.0 * torch.finfo(X.dtype).eps * float(x_sq.max())
    fast = _fast_numpy if X.device.type == "cpu" and X.dtype in _NUMPY else _fast_torch
    out = fast(Xc, x_sq, G, first, n_landmarks, tiny)
    idx, mind = out if out is not None else _exact(Xc, x_sq, G, first, n_landmarks, tiny)
    # covering radius, recomputed directly at the farthest point (no cancellation error)
    far = int(mind.argmax())
    eps = float((Xc[idx] - Xc[far]).norm(dim=1).min()) if float(mind[far]) > 0 else 0.0
    return idx, float(unscale(torch.tensor(eps, dtype=torch.float64), e))


_NUMPY = (torch.float32, torch.float64)


def _fast_numpy(Xc: torch.Tensor, x_sq: torch.Tensor, G: torch.Tensor | None, first: int,
                m: int, tiny: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """CPU: numpy views of the tensors, a few O(N) vector operations per landmark (torch's
    per-operation overhead would dominate at probe-set sizes). None when a squared distance
    to the landmarks falls to ``tiny`` (near duplicates): :func:`_exact` decides then."""
    s = x_sq.numpy()
    Gn = G.numpy() if G is not None else None
    prod = torch.empty_like(x_sq)
    row, tmp, mind = np.empty_like(s), prod.numpy(), np.full_like(s, np.inf)
    idx = np.empty(m, dtype=np.int64)
    j = idx[0] = first
    for t in range(m):
        np.add(s, s[j], out=row)
        if Gn is not None:
            np.multiply(Gn[j], 2.0, out=tmp)
        else:
            torch.mv(Xc, Xc[j], out=prod)
            tmp *= 2.0
        row -= tmp
        np.maximum(row, 0.0, out=row)
        row[j] = 0.0
        np.minimum(mind, row, out=mind)
        if t + 1 == m:
            break
        j = int(mind.argmax())
        if mind[j] <= tiny:
            return None
        idx[t + 1] = j
    return torch.from_numpy(idx), torch.from_numpy(mind)


def _fast_torch(Xc: torch.Tensor, x_sq: torch.Tensor, G: torch.Tensor | None, first: int,
                m: int, tiny: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Accelerators: no host synchronisation inside the loop (one check at the end); None
    when a squared distance to the landmarks fell to ``tiny`` (near duplicates)."""
    dev = Xc.device
    idx = torch.empty(m, dtype=torch.long, device=dev)
    idx[0] = first
    mind = torch.full_like(x_sq, float("inf"))
    low = torch.full((), float("inf"), dtype=x_sq.dtype, device=dev)
    for t in range(m):
        j = idx[t : t + 1]
        prod = G.index_select(0, j)[0] if G is not None else Xc @ Xc.index_select(0, j)[0]
        d2 = (x_sq + x_sq.index_select(0, j) - 2.0 * prod).clamp_min_(0.0).index_fill_(0, j, 0.0)
        torch.minimum(mind, d2, out=mind)
        if t + 1 == m:
            break
        top, nxt = mind.max(dim=0)
        torch.minimum(low, top, out=low)
        idx[t + 1] = nxt
    return None if float(low) <= tiny else (idx, mind)


def _exact(Xc: torch.Tensor, x_sq: torch.Tensor, G: torch.Tensor | None, first: int,
           m: int, tiny: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference loop: direct differences once the expanded form reaches rounding level,
    and an early stop once every point duplicates a landmark (a host check per landmark)."""
    n = Xc.shape[0]
    idx = torch.empty(m, dtype=torch.long, device=Xc.device)
    idx[0] = first
    mind = torch.full((n,), float("inf"), dtype=Xc.dtype, device=Xc.device)
    direct = False
    for t in range(m):
        j = idx[t]
        if direct:
            d2 = (Xc - Xc[j]).pow(2).sum(dim=1)
        else:
            d2 = (x_sq + x_sq[j] - 2.0 * (Xc @ Xc[j] if G is None else G[j])).clamp_min_(0.0)
            d2[j] = 0.0
        torch.minimum(mind, d2, out=mind)
        if t + 1 == m:
            break
        if not direct and float(mind.max()) <= tiny:
            direct = True
            mind = torch.stack([(Xc - Xc[i]).pow(2).sum(dim=1) for i in idx[: t + 1]]).amin(0)
        nxt = mind.argmax()
        if float(mind[nxt]) == 0.0:
            return idx[: t + 1], mind  # every point duplicates a landmark
        idx[t + 1] = nxt
    return idx, mind
