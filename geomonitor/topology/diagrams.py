"""Vietoris–Rips persistence diagrams of a point cloud: exact H0, landmark H1/H2.

* **H0** is exact on every point: its finite deaths are the Euclidean minimum spanning tree
  edge lengths (:mod:`geomonitor.topology.mst`), computed in torch on the cloud's device.
* **H1 (and H2 on request)** come from giotto-ph (Pérez, Hess, et al., "giotto-ph: A Python
  Library for High-Performance Computation of Persistent Homology of Vietoris–Rips
  Filtrations", 2021) run on the precomputed distance matrix of ``n_landmarks``
  farthest-point landmarks (:mod:`geomonitor.topology.landmarks`). With covering radius
  ``eps`` (every point within ``eps`` of a landmark), the stability theorem for Rips
  persistence (Chazal, de Silva & Oudot, "Persistence stability for geometric complexes",
  Geom. Dedicata 173, 2014; Chazal et al., "Gromov-Hausdorff stable signatures for shapes
  using persistence", SGP 2009) bounds the bottleneck distance to the full cloud's diagram:

      d_B(Dgm_k(landmarks), Dgm_k(X)) <= 2 * d_GH(landmarks, X) <= 2 * eps.

Conventions: bars are ``(birth, death)`` rows in float64 numpy arrays, one (n, 2) array per
dimension 0..maxdim. Only finite bars with ``death > birth`` are kept, as in ripser: the one
essential H0 class ``[0, inf)`` is *not* included (Rips H1/H2 of a finite cloud have no
essential classes), and zero-length bars (duplicate points) are dropped.

Scale: every bar scales linearly with the cloud, so the cloud is first multiplied by a power
of two that brings its largest absolute value into [1/2, 1) (exact, see
:mod:`geomonitor._inputs`) and the bars, ``eps`` and the landmark distances are multiplied
back; giotto-ph (which rounds distances to float32) gets its matrix scaled the same way. A
float32 cloud of values near 1e19 or above -- where squared distances overflow float32 --
or near 1e-20 and below gives the diagrams of the float64 computation (to float32 rounding);
a float64 cloud whose distances pass float64's range raises ``ValueError``.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> t = torch.rand(2000, generator=g) * 6.2832
    >>> X = torch.stack([t.cos(), t.sin()], 1) + 0.05 * torch.randn(2000, 2, generator=g)
    >>> dg = persistence_diagrams(X, maxdim=1, n_landmarks=200, generator=g)
    >>> dg[1].shape, dg.bottleneck_bound          # one long H1 bar; d_B <= 2 eps
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from geomonitor._inputs import as_points, unit_scale, unscale
from geomonitor.distances import pairwise_distances
from geomonitor.topology.landmarks import farthest_point_sampling
from geomonitor.topology.mst import DENSE_MAX, gram, mst_edges

__all__ = ["Diagrams", "PreparedDiagrams", "persistence_diagrams", "prepare_diagrams"]


@dataclass(frozen=True)
class Diagrams:
    """Persistence diagrams of one point cloud.

    Attributes:
        diagrams: ``diagrams[k]`` is a float64 (n_k, 2) array of finite (birth, death) bars
            of dimension k (essential H0 bar and zero-length bars excluded).
        n_points: points used after dropping rows with NaN/Inf.
        n_dropped: rows dropped for NaN/Inf.
        n_landmarks: points used for dimensions >= 1 (= n_points when no subsampling).
        hausdorff_radius: covering radius eps of the landmarks, max over points of the
            distance to the nearest landmark (0 when every point is used).
        h0_exact: whether H0 was computed on every point (else on the landmarks).
    """

    diagrams: tuple[np.ndarray, ...]
    n_points: int
    n_dropped: int
    n_landmarks: int
    hausdorff_radius: float
    h0_exact: bool = True

    @property
    def maxdim(self) -> int:
        return len(self.diagrams) - 1

    @property
    def bottleneck_bound(self) -> float:
        """``2 * hausdorff_radius``: bound on the bottleneck distance between the landmark
        diagrams (dimensions >= 1, and H0 when ``h0_exact`` is False) and the full cloud's."""
        return 2.0 * self.hausdorff_radius

    def __getitem__(self, dim: int) -> np.ndarray:
        return self.diagrams[dim]

    def __len__(self) -> int:
        return len(self.diagrams)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.diagrams)


def persistence_diagrams(
    X: Any,
    maxdim: int = 1,
    *,
    n_landmarks: int | None = None,
    generator: torch.Generator | None = None,
    exact_h0: bool = True,
    n_threads: int = 1,
    dense_max: int = DENSE_MAX,
    ripser: Callable[[np.ndarray, int], Sequence[np.ndarray]] | None = None,
) -> Diagrams:
    """Vietoris–Rips persistence of the rows of ``X`` (Euclidean distance), see module.

    Args:
        X: (N, D) point cloud (tensor on any device, or array). Rows with NaN/Inf are dropped
            and counted; float16/bfloat16 is computed in float32; N >= 2 finite rows needed.
        maxdim: highest homology dimension, 0 <= maxdim <= 3. Dimensions >= 1 cost up to
            O(m^(maxdim + 2)) in the number m of landmarks; maxdim=2 wants m of a few hundred.
        n_landmarks: farthest-point landmarks for dimensions >= 1 (>= 3), or None for every
            point. If N <= n_landmarks every point is used (eps = 0); if the cloud has fewer
            distinct points, sampling stops once every point is covered.
        generator: draws the first landmark; default a fresh default-seeded generator.
        exact_h0: H0 from the minimum spanning tree of every point (O(N^2 D)); if False, H0
            comes from the landmarks too (then also within ``bottleneck_bound``).
        n_threads: giotto-ph threads for dimensions >= 1.
        dense_max: largest N for which H0 uses a dense N x N matrix (Prim); above it chunked
            Borůvka keeps memory at O(N) per row chunk.
        ripser: ``ripser(D, maxdim)`` -> one (n_k, 2) array of bars per dimension 0..maxdim
            for a float64 (m, m) distance matrix ``D``, in place of giotto-ph in this
            process, e.g. a :class:`~geomonitor.topology.ripser_process.RipserProcess`
            (giotto-ph in a child process; then ``n_threads`` is not used).

    Returns:
        :class:`Diagrams`.

    Raises:
        ValueError: invalid ``maxdim``, ``n_landmarks``, ``n_threads``, ``ripser``, fewer than 2
            finite rows (see :func:`geomonitor._inputs.as_points`), or distances beyond the
            float64 range (values near 1e308).

    Cost: H0 O(N^2 D) flops on ``X.device``; landmarks O(m N D); landmark distance matrix
    O(m^2 D); giotto-ph on m points (CPU).
    """
    _check_solver(n_threads, ripser)
    prepared = prepare_diagrams(X, maxdim, n_landmarks=n_landmarks, generator=generator,
                                exact_h0=exact_h0, dense_max=dense_max)
    return prepared.complete(ripser, n_threads=n_threads)


@dataclass(frozen=True)
class PreparedDiagrams:
    """The tensor half of :func:`persistence_diagrams`, ready for a Vietoris–Rips solver.

    :func:`prepare_diagrams` does the O(N^2 D) work in torch, where the data lives (exact H0,
    landmarks, their distance matrix); :meth:`complete` runs giotto-ph (or ``ripser``) on
    the small m x m matrix. Splitting them lets the tensor work run on the training thread
    or GPU and giotto-ph in another process (see
    :class:`~geomonitor.topology.ripser_process.RipserProcess`).

    Attributes:
        h0: exact H0 bars (float64 (n, 2)) when ``h0_exact``, else ``None``.
        distances: float64 (m, m) distances of the landmarks, ``None`` when not needed
            (``maxdim == 0`` with exact H0).
        maxdim, n_points, n_dropped, n_landmarks, hausdorff_radius, h0_exact: as in
            :class:`Diagrams`.
    """

    h0: np.ndarray | None
    distances: np.ndarray | None
    maxdim: int
    n_points: int
    n_dropped: int
    n_landmarks: int
    hausdorff_radius: float
    h0_exact: bool

    def complete(self, ripser: Callable[[np.ndarray, int], Sequence[np.ndarray]] | None = None,
                 *, n_threads: int = 1) -> Diagrams:
        """The :class:`Diagrams`: giotto-ph in this process (``n_threads`` threads), or
        ``ripser(distances, maxdim)``, on the landmarks for the dimensions it needs."""
        _check_solver(n_threads, ripser)
        dgms = [] if self.h0 is None else [self.h0]
        if self.distances is not None:
            dgms.extend(_rips(self.distances, self.maxdim, n_threads, ripser, skip_h0=self.h0_exact))
        return Diagrams(tuple(dgms), n_points=self.n_points, n_dropped=self.n_dropped,
                        n_landmarks=self.n_landmarks, hausdorff_radius=self.hausdorff_radius,
                        h0_exact=self.h0_exact)


def prepare_diagrams(X: Any, maxdim: int = 1, *, n_landmarks: int | None = None,
                     generator: torch.Generator | None = None, exact_h0: bool = True,
                     dense_max: int = DENSE_MAX) -> PreparedDiagrams:
    """Exact H0 and the landmark distance matrix of ``X``: arguments, errors and costs as in
    :func:`persistence_diagrams` (all but giotto-ph's part)."""
    if isinstance(maxdim, bool) or not isinstance(maxdim, int) or not 0 <= maxdim <= 3:
        raise ValueError(f"maxdim must be an int in [0, 3], got {maxdim!r}")
    if n_landmarks is not None and (isinstance(n_landmarks, bool) or not isinstance(n_landmarks, int)
                                    or n_landmarks < 3):
        raise ValueError(f"n_landmarks must be an int >= 3 or None, got {n_landmarks!r}")
    pts = as_points(X, min_points=2)
    P, e = unit_scale(pts.X)  # bars scale linearly: computed at unit scale, scaled back
    n = P.shape[0]

    need_landmarks = maxdim >= 1 or not exact_h0
    # one Gram matrix serves both the spanning tree and the landmarks when N x N fits
    G = gram(P - P.mean(dim=0, keepdim=True)) if exact_h0 and n <= dense_max else None
    idx, eps = torch.arange(n, device=P.device), 0.0
    if need_landmarks and n_landmarks is not None:
        idx, eps = farthest_point_sampling(P, n_landmarks, generator=generator, gram_matrix=G)
        eps = float(unscale(torch.tensor(eps, dtype=torch.float64), e))
    h0 = None
    if exact_h0:
        deaths = mst_edges(P, dense_max=dense_max, gram_matrix=G)[1]
        del G
        deaths = unscale(deaths.double(), e).cpu().numpy()
        deaths = np.sort(deaths[deaths > 0])
        h0 = np.stack([np.zeros_like(deaths), deaths], axis=1)
    D = pairwise_distances(pts.X[idx].double()).cpu().numpy() if need_landmarks else None
    return PreparedDiagrams(h0, D, maxdim, n_points=n, n_dropped=pts.n_dropped,
                            n_landmarks=int(idx.numel()), hausdorff_radius=float(eps),
                            h0_exact=bool(exact_h0))


def _check_solver(n_threads: Any, ripser: Any) -> None:
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or not (n_threads >= 1 or n_threads == -1):
        raise ValueError(f"n_threads must be an int >= 1 (or -1 for all cores), got {n_threads!r}")
    if ripser is not None and not callable(ripser):
        raise ValueError(f"ripser must be a callable or None, got {type(ripser).__name__}")


def _rips(D: np.ndarray, maxdim: int, n_threads: int,
          ripser: Callable[[np.ndarray, int], Sequence[np.ndarray]] | None, *,
          skip_h0: bool) -> list[np.ndarray]:
    """giotto-ph (or ``ripser``) on a float64 distance matrix; finite, positive bars.

    The solver sees ``D * 2**-e`` with largest entry in [1/2, 1) (giotto-ph rounds to float32,
    whose range float64 distances can pass either way); the bars are scaled back by 2^e."""
    e = math.frexp(float(D.max()))[1] if D.size else 0
    Du = np.ldexp(D, -e)
    if ripser is None:
        from gph import ripser_parallel

        raw = ripser_parallel(Du, metric="precomputed", maxdim=maxdim, n_threads=n_threads)["dgms"]
    else:
        raw = ripser(Du, maxdim)
    out = []
    for k, d in enumerate(raw):
        if skip_h0 and k == 0:
            continue
        d = np.ldexp(np.asarray(d, dtype=np.float64).reshape(-1, 2), e)
        out.append(d[np.isfinite(d[:, 1]) & (d[:, 1] > d[:, 0])])
    return out
