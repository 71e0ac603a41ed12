"""Largest algebraic eigenpairs of a symmetric operator: thick-restart Lanczos.

Method: Krylov-Rayleigh-Ritz with full reorthogonalisation. The basis ``Q`` (m, P) is kept
orthonormal (classical Gram-Schmidt applied twice, "twice is enough"), together with
``AQ = A Q``; the projected matrix ``T = Q A Q^T`` (m, m) is diagonalised in float64 and its
top Ritz pairs ``(theta_i, y_i)`` give the estimates. The basis grows by the residual
``r_i = A y_i - theta_i y_i`` of the least converged wanted pair. From one start vector this
residual is parallel to the next Lanczos vector (``r_i`` is orthogonal to the Krylov space
``K_m`` by the Galerkin condition and lies in ``K_{m+1}``), so the iteration *is* Lanczos with
full reorthogonalisation (Lanczos 1950; Parlett, "The Symmetric Eigenvalue Problem", 1998,
ch. 13). When the basis reaches ``max_basis`` it is compressed to the top Ritz vectors, the
thick restart of Wu & Simon (2000), "Thick-restart Lanczos method for large symmetric
eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2). A block of warm-start vectors
(previous eigenvectors) is a thick restart from the previous measurement.

Convergence (every wanted pair i < k), with ``scale = max_j |theta_j|``:
``||r_i|| <= tol * scale`` (the residual bounds the eigenvalue error), or
``min(||r_i||, ||r_i||^2 / gap_i) <= tol * scale`` *and* the Ritz value moved by at most
``tol * scale`` since the previous step *and* ``||r_i|| <= sqrt(tol) * scale`` (a guard
against stopping on a Ritz value that is passing by an interior eigenvalue), where ``gap_i`` is the distance from ``theta_i`` to
the other Ritz values (the residual-squared-over-gap estimate of the eigenvalue error;
Parlett 1998, ch. 11). From a cold (random) start, convergence is declared only once the
basis has ``2k + 10`` vectors. The loop always stops at ``max_matvec`` products.

Cost: at most ``max_matvec`` operator products; O(max_basis * P) memory for ``Q`` and ``AQ``
and O(m * P) work per step for the reorthogonalisation.

Failure modes: ``k`` > P or bad ``init`` shape raise ``ValueError``; hitting ``max_matvec``
returns ``converged=False`` with a reason. An invariant subspace (breakdown) is completed
with random vectors from ``generator``; a basis that spans the whole space is exact.

Example::

    A = torch.randn(50, 50, dtype=torch.float64); A = A + A.T
    res = lanczos_top(lambda v: A @ v, 50, k=2, dtype=torch.float64)
    res.eigenvalues  # ~ torch.linalg.eigvalsh(A)[-2:].flip(0)
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

__all__ = ["LanczosResult", "lanczos_top"]


class LanczosResult(NamedTuple):
    """Top-k Ritz pairs: values (k,) descending, vectors (k, P), residual norms (k,)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    n_matvec: int
    converged: bool
    reason: str


def _orth(v: torch.Tensor, Q: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """``v`` minus its projection on the rows of ``Q`` (twice), and its norm after."""
    if Q is not None and Q.shape[0] > 0:
        for _ in range(2):
            v = v - Q.T @ (Q @ v)
    return v, float(torch.linalg.vector_norm(v))


def lanczos_top(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_matvec: int = 100,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_basis: int | None = None,
) -> LanczosResult:
    """The ``k`` largest algebraic eigenpairs of the symmetric operator ``matvec`` on R^dim.

    Args:
        matvec: ``v (dim,) -> A v (dim,)``, symmetric.
        dim: P, the dimension.
        k: number of wanted eigenpairs, 1 <= k <= dim.
        tol: relative tolerance (see the module docstring), > 0.
        max_matvec: hard limit on products, >= 1.
        init: warm start, (dim,) or (j, dim) vectors (e.g. the previous eigenvectors); random
            vectors from ``generator`` are used when None or when they span fewer than 1.
        generator: source of random start / completion vectors (a fresh default-seeded
            generator when None, so results are reproducible).
        device, dtype: of the vectors.
        max_basis: basis size that triggers a thick restart (default max(30, 3k)).

    Returns:
        :class:`LanczosResult`; eigenvectors orthonormal rows, shape (k, dim).
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int; got {dim!r}")
    if not isinstance(k, int) or k < 1 or k > dim:
        raise ValueError(f"k must be an int in [1, {dim}] (the number of parameters); got {k!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite float; got {tol!r}")
    if not isinstance(max_matvec, int) or max_matvec < 1:
        raise ValueError(f"max_hvp must be a positive int; got {max_matvec!r}")
    max_basis = max(30, 3 * k) if max_basis is None else int(max_basis)
    if max_basis < k + 2:
        raise ValueError(f"max_basis must be >= k + 2 = {k + 2}; got {max_basis}")
    if generator is None:
        generator = torch.Generator()
    starts: list[torch.Tensor] = []
    if init is not None:
        init = torch.as_tensor(init)
        if init.dim() == 1:
            init = init[None]
        if init.dim() != 2 or init.shape[1] != dim:
            raise ValueError(f"init must have shape ({dim},) or (j, {dim}); got {tuple(init.shape)}")
        starts = [row.to(device=device, dtype=dtype) for row in init if torch.isfinite(row).all()]

    def rand() -> torch.Tensor:
        return torch.randn(dim, generator=generator, device=generator.device, dtype=dtype).to(device)

    Q = torch.empty(0, dim, device=device, dtype=dtype)
    AQ = torch.empty(0, dim, device=device, dtype=dtype)
    n = 0

    def add(v: torch.Tensor) -> bool:
        nonlocal Q, AQ, n
        before = float(torch.linalg.vector_norm(v))
        if before == 0.0 or not math.isfinite(before):
            return False
        v, after = _orth(v, Q)
        if after <= 1e-6 * before:
            return False
        q = v / after
        Aq = matvec(q).to(device=device, dtype=dtype)
        n += 1
        Q = torch.cat([Q, q[None]])
        AQ = torch.cat([AQ, Aq[None]])
        return True

    for v in starts[:k]:
        if n >= max_matvec:
            break
        add(v)
    while Q.shape[0] == 0:
        add(rand())

    # a cold start may pass close to an interior eigenvalue while its component on the top
    # eigenvector is still small (misconvergence, Parlett 1998, ch. 13): from random vectors
    # convergence is only declared once the Krylov space has 2k + 10 dimensions
    min_basis = min(dim, 2 * k + 10) if len(starts) == 0 else 1
    prev_theta: torch.Tensor | None = None
    while True:
        m = Q.shape[0]
        T = (Q.double() @ AQ.double().T)
        T = 0.5 * (T + T.T)
        theta, S = torch.linalg.eigh(T)
        theta, S = theta.flip(0), S.flip(1)
        kk = min(k, m)
        Sk = S[:, :kk].to(dtype)
        Y = Sk.T @ Q
        R = Sk.T @ AQ - theta[:kk, None].to(dtype) * Y
        res = torch.linalg.vector_norm(R.double(), dim=1)
        scale = max(float(theta.abs().max()), torch.finfo(dtype).tiny)
        thr = tol * scale
        if m > 1:
            diff = (theta[:kk, None] - theta[None, :]).abs()
            idx = torch.arange(kk, device=diff.device)
            diff[idx, idx] = float("inf")
            gap = diff.min(dim=1).values
            est = torch.minimum(res, res**2 / gap)
        else:
            est = res
        moved = (
            (theta[:kk] - prev_theta[:kk]).abs() if prev_theta is not None and prev_theta.numel() >= kk
            else torch.full((kk,), float("inf"), dtype=torch.float64, device=theta.device)
        )
        done = (res <= thr) | ((est <= thr) & (moved <= thr) & (res <= math.sqrt(tol) * scale))
        exact = m >= dim
        if kk == k and (bool(done.all() and m >= min_basis) or exact):
            return LanczosResult(theta[:k].to(dtype), Y, res.to(dtype), n, True, "")
        if n >= max_matvec:
            worst = float((res / scale).max()) if kk == k else float("nan")
            reason = (
                f"max_hvp={max_matvec} reached before convergence "
                f"(largest relative residual {worst:.2e}, tol {tol:.1e})"
            )
            if kk < k:
                reason = f"max_hvp={max_matvec} reached with only {kk} of k={k} Ritz pairs"
                Y = torch.cat([Y, torch.full((k - kk, dim), float("nan"), device=device, dtype=dtype)])
                pad = torch.full((k - kk,), float("nan"), dtype=torch.float64, device=theta.device)
                theta, res = torch.cat([theta[:kk], pad]), torch.cat([res, pad])
            return LanczosResult(theta[:k].to(dtype), Y, res.to(dtype), n, False, reason)
        prev_theta = theta.clone()
        if m >= max_basis:  # thick restart: keep the top Ritz vectors (exact A-images, no products)
            keep = min(m, max(k + 1, max_basis // 2))
            Sk_keep = S[:, :keep].to(dtype)
            Q, AQ = Sk_keep.T @ Q, Sk_keep.T @ AQ
        order = torch.argsort(torch.where(done, -1.0, res), descending=True)
        if not any(add(R[int(i)]) for i in order) and not add(rand()) and not add(rand()):
            reason = "the basis could not be extended (numerical breakdown)"
            return LanczosResult(theta[:kk].to(dtype), Y, res.to(dtype), n, False, reason)
