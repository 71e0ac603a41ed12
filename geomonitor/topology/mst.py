"""Exact 0-dimensional Vietoris–Rips persistence as a Euclidean minimum spanning tree.

In the Vietoris–Rips filtration every point is born at 0 and two components merge when the
shortest edge between them enters the complex. This is Kruskal's algorithm, so the finite
H0 deaths are exactly the edge lengths of a Euclidean minimum spanning tree (EMST), one bar
``[0, length)`` per tree edge (Edelsbrunner & Harer, "Computational Topology", 2010, §VII;
Carlsson, "Topology and data", Bull. AMS 46, 2009). Every MST has the same multiset of edge
lengths, so ties do not matter.

Two exact algorithms, both on the tensor's device:

* **Prim on the dense Gram matrix** (``N <= dense_max``): one matrix product
  ``G = X X^T`` of the centred cloud (O(N^2 D) flops, N^2 floats; squared distances are
  ``G_ii + G_jj - 2 G_ij``), then N vectorised steps of O(N) each (numpy views on CPU, torch
  without host synchronisation on accelerators).
* **Borůvka, chunked** (larger N): each round finds, for every point, its nearest point in
  another component by chunked matrix products (O(N^2 D) per round, ``chunk_size * N``
  extra floats), keeps the lightest edge out of every component and merges. The number of
  components at least halves per round, so at most ceil(log2 N) rounds.

Edge *selection* uses the expanded form ``|a|^2 + |b|^2 - 2<a, b>`` on the centred cloud;
the N - 1 selected lengths are then recomputed directly as ``||x_i - x_j||`` so they carry
no cancellation error.

Example:
    >>> X = torch.randn(500, 16)
    >>> lengths = mst_edge_lengths(X)      # (499,), ascending; = finite H0 deaths
"""
from __future__ import annotations

import numpy as np
import torch

from geomonitor.distances import auto_chunk_size, sq_dists

__all__ = ["gram", "mst_edge_lengths", "mst_edges"]

DENSE_MAX = 8192  # N x N float32 = 256 MiB at the limit


def gram(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G, sq)`` with ``G = Xc Xc^T`` (one O(N^2 D) matrix product) and ``sq = diag(G)``, so
    that squared distances to row j are ``sq + sq[j] - 2 G[j]`` (exactly 0 at j)."""
    G = Xc @ Xc.T
    return G, G.diagonal().clone()


def mst_edges(
    X: torch.Tensor,
    *,
    dense_max: int = DENSE_MAX,
    chunk_size: int | None = None,
    gram_matrix: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges of a Euclidean minimum spanning tree of the rows of ``X``.

    Args:
        X: (N, D) floating tensor, N >= 1, finite values; any device.
        dense_max: largest N handled by Prim on the dense N x N Gram matrix; above it, chunked
            Borůvka keeps memory at O(chunk_size * N).
        chunk_size: rows per distance block (Borůvka only); default ~128 MiB per block.
        gram_matrix: ``gram(X - X.mean(0))`` if the caller already has it (Prim only).

    Returns:
        ``(edges, lengths)``: (N - 1, 2) long tensor of endpoint indices and (N - 1,)
        lengths ``||x_i - x_j||`` recomputed directly, in ``X.dtype`` on ``X.device``.

    Cost: O(N^2 D) flops (Prim) or O(N^2 D log N) (Borůvka).
    """
    n = X.shape[0]
    if n < 2:
        return (torch.empty(0, 2, dtype=torch.long, device=X.device),
                torch.empty(0, dtype=X.dtype, device=X.device))
    Xc = X.detach() - X.detach().mean(dim=0, keepdim=True)
    if n <= dense_max or gram_matrix is not None:
        G, sq = gram_matrix if gram_matrix is not None else gram(Xc)
        edges = _prim_numpy(G, sq) if G.device.type == "cpu" else _prim_torch(G, sq)
    else:
        edges = _boruvka(Xc, chunk_size)
    lengths = (Xc[edges[:, 0]] - Xc[edges[:, 1]]).norm(dim=1)
    return edges, lengths


def mst_edge_lengths(
    X: torch.Tensor, *, dense_max: int = DENSE_MAX, chunk_size: int | None = None
) -> torch.Tensor:
    """Sorted EMST edge lengths = the N - 1 finite H0 deaths of Rips persistence (see module).

    Zero lengths (duplicate points) are kept here; :func:`persistence_diagrams` drops them as
    zero-persistence bars.
    """
    return mst_edges(X, dense_max=dense_max, chunk_size=chunk_size)[1].sort().values


def _prim_numpy(G: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """Prim's algorithm on squared distances from the Gram matrix (CPU: numpy views of the
    tensors, ~N small vector operations of O(N) each)."""
    Gn, s = G.numpy(), sq.numpy()
    n = s.shape[0]
    key = s + s[0] - 2.0 * Gn[0]
    key[0] = np.inf
    parent = np.zeros(n, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    free[0] = False
    out = np.empty((n - 1, 2), dtype=np.int64)
    row = np.empty(n, dtype=Gn.dtype)
    closer = np.empty(n, dtype=bool)
    for t in range(n - 1):
        j = int(key.argmin())
        out[t] = parent[j], j
        free[j] = False
        np.multiply(Gn[j], -2.0, out=row)
        row += s
        row += s[j]
        np.less(row, key, out=closer)
        closer &= free
        np.copyto(key, row, where=closer)
        np.copyto(parent, j, where=closer)
        key[j] = np.inf
    return torch.from_numpy(out)


def _prim_torch(G: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """Prim's algorithm on the Gram matrix in torch (accelerators): no host sync in the loop."""
    n, dev = sq.shape[0], sq.device
    inf = torch.tensor(float("inf"), dtype=G.dtype, device=dev)
    key = sq + sq[0] - 2.0 * G[0]
    parent = torch.zeros(n, dtype=torch.long, device=dev)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    done[0] = True
    key[0] = inf
    out = torch.empty(n - 1, 2, dtype=torch.long, device=dev)
    for t in range(n - 1):
        j = key.argmin().view(1)
        out[t, 1:] = j
        out[t, :1] = parent.index_select(0, j)
        done.index_fill_(0, j, True)
        row = sq + sq.index_select(0, j) - 2.0 * G.index_select(0, j)[0]
        closer = (row < key) & ~done
        key = torch.where(closer, row, key).index_fill_(0, j, float("inf"))
        parent = torch.where(closer, j, parent)
    return out


def _boruvka(X: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """Chunked Borůvka; candidate edges of a round are merged lightest first (Kruskal on the
    candidates), so equal lengths cannot close a cycle."""
    n, dev = X.shape[0], X.device
    cs = chunk_size or auto_chunk_size(n, n)
    x_sq = (X * X).sum(dim=1)
    uf = list(range(n))

    def find(a: int) -> int:
        while uf[a] != a:
            uf[a] = uf[uf[a]]
            a = uf[a]
        return a

    edges: list[tuple[int, int]] = []
    while len(edges) < n - 1:
        comp = torch.tensor([find(i) for i in range(n)], device=dev)
        best_d = torch.empty(n, dtype=X.dtype, device=dev)
        best_j = torch.empty(n, dtype=torch.long, device=dev)
        for s in range(0, n, cs):
            block = sq_dists(X[s : s + cs], X, x_sq)
            block.masked_fill_(comp[s : s + cs, None] == comp[None, :], float("inf"))
            best_d[s : s + cs], best_j[s : s + cs] = block.min(dim=1)
            del block
        # lightest outgoing edge per component (lowest point index among ties)
        comp_min = torch.full((n,), float("inf"), dtype=X.dtype, device=dev)
        comp_min.scatter_reduce_(0, comp, best_d, reduce="amin")
        is_min = best_d == comp_min[comp]
        idx = torch.arange(n, device=dev)
        first = torch.full((n,), n, dtype=torch.long, device=dev)
        first.scatter_reduce_(0, comp, torch.where(is_min, idx, n), reduce="amin")
        sel = first[first < n]
        order = best_d[sel].argsort()
        for i, j in zip(sel[order].tolist(), best_j[sel][order].tolist()):
            ri, rj = find(i), find(j)
            if ri != rj:
                uf[ri] = rj
                edges.append((i, j))
    return torch.tensor(edges, dtype=torch.long, device=dev).view(-1, 2)
