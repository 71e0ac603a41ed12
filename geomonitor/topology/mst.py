"""Exact 0-dimensional Vietoris–Rips persistence as a Euclidean minimum spanning tree.

In the Vietoris–Rips filtration every point is born at 0 and two components merge when the
shortest edge between them enters the complex. This is Kruskal's algorithm, so the finite
H0 deaths are exactly the edge lengths of a Euclidean minimum spanning tree (EMST), one bar
``[0, length)`` per tree edge (Edelsbrunner & Harer, "Computational Topology", 2010, §VII;
Carlsson, "Topology and data", Bull. AMS 46, 2009). Every MST has the same multiset of edge
lengths, so ties do not matter.

Two exact algorithms, both on the tensor's device:

* **Prim on the dense Gram matrix** (CPU, ``N <= dense_max``): one matrix product
  ``G = X X^T`` of the centred cloud (O(N^2 D) flops, N^2 floats; squared distances are
  ``G_ii + G_jj - 2 G_ij``), then N vectorised numpy steps of O(N) each.
* **Borůvka with neighbour lists** (CPU above ``dense_max``): one chunked pass of matrix
  products gives every point its ``k`` nearest points (``chunk_size * N`` extra floats, never
  an N x N matrix); each Borůvka round reads every point's nearest point in another component
  off its list (components only grow, so the first list entry outside the component is
  exact) and recomputes the list, against the points outside the component, only for the
  points whose whole list lies inside and whose bound ``d_k`` is below the lightest edge
  found out of their component. On the clouds of ``benchmarks/bench_topology.py`` about N
  rows are formed in all, so the cost is one Gram matrix's O(N^2 D) flops plus O(N k) per
  round, against O(N^2 D) per round for plain Borůvka.
* **Borůvka** (accelerators): each round finds, for every point, its nearest point in another
  component (O(N^2) per round from the Gram matrix; O(N^2 D) by chunked matrix products above
  ``dense_max``, ``chunk_size * N`` extra floats), keeps the lightest edge out of every
  component and merges. The number of components at least halves per round, so at most
  ceil(log2 N) rounds, each one host synchronisation, where Prim would launch N sequences of
  small kernels.

Edge *selection* uses the expanded form ``|a|^2 + |b|^2 - 2<a, b>`` on the centred cloud;
the N - 1 selected lengths are then recomputed directly as ``||x_i - x_j||`` so they carry
no cancellation error.

Input. ``X`` passes the boundary of :func:`geomonitor.knn`
(:func:`geomonitor._inputs.as_points`): numpy arrays and other array-likes are accepted,
integers and bool are computed in float32 (64-bit integers in float64), float16/bfloat16 in
float32, and the lengths have that compute dtype; complex input, a shape other than (N, D) or
N = 0 is a ``ValueError``, and so is a row with NaN or Inf (naming the rows: the edges are
row indices). The cloud is scaled by a power of two first
(:func:`geomonitor._inputs.unit_scale`, exact), so float32 clouds with values near 1e30 give
finite lengths; lengths beyond the compute dtype's range raise ``ValueError``.

Example:
    >>> X = torch.randn(500, 16)
    >>> lengths = mst_edge_lengths(X)      # (499,), ascending; = finite H0 deaths
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from geomonitor._inputs import as_points, unit_scale, unscale
from geomonitor.distances import auto_chunk_size, sq_dists

__all__ = ["gram", "mst_edge_lengths", "mst_edges"]

DENSE_MAX = 8192  # N x N float32 = 256 MiB at the limit
_ROWS_AHEAD = 2048  # CPU Prim forms all squared distances up to here (16 MiB in float32)
_LIST = 16  # nearest points outside its component kept per point (Borůvka with lists)


def gram(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G, sq)`` with ``G = Xc Xc^T`` (one O(N^2 D) matrix product) and ``sq = diag(G)``, so
    that squared distances to row j are ``sq + sq[j] - 2 G[j]`` (exactly 0 at j)."""
    G = Xc @ Xc.T
    return G, G.diagonal().clone()


def mst_edges(
    X: Any,
    *,
    dense_max: int = DENSE_MAX,
    chunk_size: int | None = None,
    gram_matrix: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges of a Euclidean minimum spanning tree of the rows of ``X``.

    Args:
        X: (N, D) point cloud, N >= 1, finite values: a tensor on any device, or a numpy
            array (see the module docstring for dtypes).
        dense_max: largest N handled on the dense N x N Gram matrix; above it, Prim on cached
            rows (CPU) or chunked Borůvka (accelerators) keeps memory at O(chunk_size * N).
        chunk_size: rows per distance block above ``dense_max`` (and of Borůvka); default
            ~128 MiB per block.
        gram_matrix: ``gram(X - X.mean(0))`` if the caller already has it (in the compute
            dtype and the units of ``X``).

    Returns:
        ``(edges, lengths)``: (N - 1, 2) long tensor of endpoint indices and (N - 1,)
        lengths ``||x_i - x_j||`` recomputed directly, in the compute dtype on ``X``'s device.

    Raises:
        ValueError: ``X`` complex, not (N, D), empty or with NaN/Inf rows; lengths beyond the
            compute dtype's range.

    Cost: O(N^2 D) flops for the Gram matrix, then O(N) per step over N steps (Prim, CPU)
    or O(N^2) per round over at most ceil(log2 N) rounds (Borůvka on the Gram matrix,
    accelerators). Above ``dense_max``: O(R N D) flops for the R >= N rows formed plus O(N^2)
    (Prim on cached rows, CPU), or O(N^2 D log N) (chunked Borůvka, accelerators).
    """
    X, e = unit_scale(as_points(X, min_points=1, drop_nonfinite=False).X)
    if gram_matrix is not None and e:  # the caller's Gram matrix, in the units of the scaled X
        gram_matrix = (unscale(gram_matrix[0], -2 * e), unscale(gram_matrix[1], -2 * e))
    n = X.shape[0]
    if n < 2:
        return (torch.empty(0, 2, dtype=torch.long, device=X.device),
                torch.empty(0, dtype=X.dtype, device=X.device))
    Xc = X.detach() - X.detach().mean(dim=0, keepdim=True)
    cs = chunk_size or auto_chunk_size(n, n)
    if n <= dense_max or gram_matrix is not None:
        G, sq = gram_matrix if gram_matrix is not None else gram(Xc)
        if G.device.type == "cpu":
            edges = _prim_numpy(G, sq)
        else:  # Prim's N sequential steps would be N kernel launches each: Borůvka instead
            def rows(s: int, e: int) -> torch.Tensor:
                return (sq[s:e, None] + sq[None, :] - 2.0 * G[s:e]).clamp_(min=0)

            edges = _boruvka(rows, n, G.device, G.dtype, cs)
    elif Xc.device.type == "cpu":
        edges = _boruvka_lists(Xc, cs)
    else:
        x_sq = (Xc * Xc).sum(dim=1)
        edges = _boruvka(lambda s, e: sq_dists(Xc[s:e], Xc, x_sq), n, Xc.device, Xc.dtype, cs)
    lengths = (Xc[edges[:, 0]] - Xc[edges[:, 1]]).norm(dim=1)
    return edges, unscale(lengths, e)


def mst_edge_lengths(
    X: Any, *, dense_max: int = DENSE_MAX, chunk_size: int | None = None
) -> torch.Tensor:
    """Sorted EMST edge lengths = the N - 1 finite H0 deaths of Rips persistence (see module).

    Zero lengths (duplicate points) are kept here; :func:`persistence_diagrams` drops them as
    zero-persistence bars. Input and errors as in :func:`mst_edges`.
    """
    return mst_edges(X, dense_max=dense_max, chunk_size=chunk_size)[1].sort().values


def _prim_numpy(G: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """Prim's algorithm on squared distances from the Gram matrix (CPU: numpy views of the
    tensors, ~N small vector operations of O(N) each). Up to ``_ROWS_AHEAD`` points the N x N
    squared distances are formed once (N^2 extra floats), which halves the work per step."""
    Gn, s = G.numpy(), sq.numpy()
    n = s.shape[0]
    D = (s[:, None] + s[None, :]) - 2.0 * Gn if n <= _ROWS_AHEAD else None
    key = D[0].copy() if D is not None else s + s[0] - 2.0 * Gn[0]
    key[0] = np.inf
    parent = np.zeros(n, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    free[0] = False
    out = np.empty((n - 1, 2), dtype=np.int64)
    buf = np.empty(n, dtype=Gn.dtype)
    closer = np.empty(n, dtype=bool)
    for t in range(n - 1):
        j = int(key.argmin())
        out[t] = parent[j], j
        free[j] = False
        if D is not None:
            row = D[j]
        else:
            row = np.multiply(Gn[j], -2.0, out=buf)
            row += s
            row += s[j]
        np.less(row, key, out=closer)
        closer &= free
        np.copyto(key, row, where=closer)
        np.copyto(parent, j, where=closer)
        key[j] = np.inf
    return torch.from_numpy(out)


def _boruvka_lists(Xc: torch.Tensor, chunk_size: int, k: int = _LIST) -> torch.Tensor:
    """Borůvka on the points, each keeping its ``k`` nearest points outside its component.

    The lists are formed by chunked matrix products (masked, ``topk``); a component only grows,
    so the first entry of a point's list outside its current component is its exact nearest
    point in another component, and a list all inside gives the lower bound ``d_k``. A point
    whose list is all inside is recomputed only when that bound is below the lightest edge
    already found out of its component. Exact; memory O(chunk_size * N + k * N).
    """
    n = Xc.shape[0]
    k = max(1, min(k, n - 1))
    dev, dtype = Xc.device, Xc.dtype
    x_sq = (Xc * Xc).sum(dim=1)
    near_d = torch.empty(n, k, dtype=dtype, device=dev)
    near_j = torch.empty(n, k, dtype=torch.long, device=dev)
    idx = torch.arange(n, device=dev)

    buf = torch.empty(min(chunk_size, n), n, dtype=dtype, device=dev)

    def refresh(points: torch.Tensor, comp: torch.Tensor) -> None:
        for s in range(0, points.numel(), chunk_size):
            p = points[s : s + chunk_size]
            # rank on |b|^2 - 2<a, b> (|a|^2 is constant along a row), one fused product into a
            # reused buffer; |a|^2 is added back on the k winners
            block = torch.addmm(x_sq, Xc[p], Xc.T, beta=1.0, alpha=-2.0, out=buf[: p.numel()])
            block.masked_fill_(comp[p, None] == comp[None, :], float("inf"))
            d, j = block.topk(k, dim=1, largest=False, sorted=True)
            near_d[p], near_j[p] = d + x_sq[p, None], j

    def nearest(comp: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if first:
            refresh(idx, comp)
        for _ in range(2):  # a second pass only after recomputing the uncertain points
            outside = (comp[near_j] != comp[:, None]) & torch.isfinite(near_d)
            has = outside.any(dim=1)
            pos = outside.to(torch.int8).argmax(dim=1)
            best_d = torch.where(has, near_d[idx, pos], float("inf"))
            best_j = near_j[idx, pos]
            comp_best = torch.full((n,), float("inf"), dtype=dtype, device=dev)
            comp_best.scatter_reduce_(0, comp, best_d, reduce="amin")
            unsure = ~has & (near_d[:, -1] < comp_best[comp])
            if not bool(unsure.any()):
                break
            refresh(idx[unsure], comp)
        return best_d, best_j

    return _boruvka_rounds(nearest, n, dev, dtype)


def _boruvka(rows: Callable[[int, int], torch.Tensor], n: int, dev: torch.device,
             dtype: torch.dtype, chunk_size: int) -> torch.Tensor:
    """Borůvka rounds over squared-distance rows ``rows(s, e)`` (an (e - s, N) block), each
    round scanning every row for the nearest point in another component."""

    def nearest(comp: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        best_d = torch.empty(n, dtype=dtype, device=dev)
        best_j = torch.empty(n, dtype=torch.long, device=dev)
        for s in range(0, n, chunk_size):
            block = rows(s, min(s + chunk_size, n))
            block.masked_fill_(comp[s : s + chunk_size, None] == comp[None, :], float("inf"))
            best_d[s : s + chunk_size], best_j[s : s + chunk_size] = block.min(dim=1)
            del block
        return best_d, best_j

    return _boruvka_rounds(nearest, n, dev, dtype)


def _boruvka_rounds(nearest: Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]], n: int,
                    dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Borůvka rounds: ``nearest(comp, first)`` gives, for every point, the squared distance to
    and index of its nearest point in another component (``comp``: root labels on ``dev``).

    The tensor work of a round (lightest edge out of each component) stays on the device; the
    host keeps the union-find: each component's candidate edge is merged lightest first
    (Kruskal on the candidates), so equal or inconsistently rounded lengths cannot close a
    cycle. One host synchronisation per round, at most ceil(log2 N) rounds.
    """
    uf = np.arange(n)

    def find(a: int) -> int:
        while uf[a] != a:
            uf[a] = uf[uf[a]]
            a = uf[a]
        return a

    idx = torch.arange(n, device=dev)
    edges: list[tuple[int, int]] = []
    first = True
    while len(edges) < n - 1:
        while True:  # pointer jumping: every entry of uf becomes its root
            nxt = uf[uf]
            if np.array_equal(nxt, uf):
                break
            uf = nxt
        comp = torch.from_numpy(uf).to(dev)
        best_d, best_j = nearest(comp, first)
        first = False
        # lightest outgoing edge per component (lowest point index among ties)
        comp_min = torch.full((n,), float("inf"), dtype=dtype, device=dev)
        comp_min.scatter_reduce_(0, comp, best_d, reduce="amin")
        is_min = best_d == comp_min[comp]
        first_pt = torch.full((n,), n, dtype=torch.long, device=dev)
        first_pt.scatter_reduce_(0, comp, torch.where(is_min, idx, n), reduce="amin")
        sel = first_pt[first_pt < n]
        sel = sel[best_d[sel].argsort()]
        before = len(edges)
        for i, j in zip(sel.tolist(), best_j[sel].tolist()):
            ri, rj = find(i), find(j)
            if ri != rj:
                uf[ri] = rj
                edges.append((i, j))
        if len(edges) == before:  # cannot happen with finite inputs; never loop forever
            raise RuntimeError("Borůvka round merged no component (non-finite distances?)")
    return torch.tensor(edges, dtype=torch.long, device=dev).view(-1, 2)
