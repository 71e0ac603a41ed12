"""Largest algebraic eigenpairs of a symmetric operator: thick-restart Lanczos.

Method: the Lanczos three-term recurrence (Lanczos 1950) on a preallocated basis ``Q``
(max_basis, P), in the Krylov-Schur form ``A Q^T = Q^T T + w b^T`` (Stewart 2002, "A
Krylov-Schur algorithm for large eigenproblems", SIAM J. Matrix Anal. Appl. 23(3)): ``T``
(m, m) is tridiagonal (plus an arrow after a restart) and kept in float64, ``w`` is the next
basis vector (unit norm, orthogonal to ``Q``) and ``b`` (m,) its coefficients. The Ritz pairs
``(theta_i, y_i = Q^T s_i)`` of ``T`` give the estimates and their residual norms come free:
``||A y_i - theta_i y_i|| = |b . s_i|``. Each step costs one product and O(P) vector work:
``f = A q - alpha q - beta q_prev`` (or minus the arrow ``Q_keep^T b`` after a restart).

Orthogonality: in floating point, Lanczos vectors lose orthogonality only towards Ritz vectors
that have converged, at the level ``eps ||A|| / ||r_i||`` (Paige 1971; Parlett, "The Symmetric
Eigenvalue Problem", 1998, ch. 13). Whenever some Ritz pair has ``||r_i|| <= sqrt(eps) ||A||``
(``||A||`` estimated by the largest |Ritz value| and ``||(alpha, beta)||`` seen) the new vector
is reorthogonalised against the whole basis (classical Gram-Schmidt, twice if the first pass
removed more than half the norm: Daniel, Gragg, Kaufman & Stewart 1976), which keeps the basis
semi-orthogonal (the selective orthogonalisation of Parlett & Scott 1979, applied to the whole
basis). Breakdown (``beta`` ~ 0: an invariant subspace) and the first step after a restart are
also fully orthogonalised. So the solver's own work per product is a few passes over P-vectors,
plus O(m P) on the rare full steps.

Thick restart (Wu & Simon 2000, "Thick-restart Lanczos method for large symmetric eigenvalue
problems", SIAM J. Matrix Anal. Appl. 22(2)): when the basis reaches ``max_basis`` it is
compressed in place to the top ``max(k + 1, max_basis // 2)`` Ritz vectors; ``T`` becomes
their Ritz values and ``b <- S_keep^T b``. A warm start (previous eigenvectors) starts the
Krylov space from their normalised sum, so one product per vector recovers their span.

Convergence (every wanted pair i < k), with ``scale = max_j |theta_j|``:
``||r_i|| <= tol * scale`` (the residual bounds the eigenvalue error), or
``min(||r_i||, ||r_i||^2 / gap_i) <= tol * scale`` *and* the Ritz value moved by at most
``tol * scale`` since the previous step *and* ``||r_i|| <= sqrt(tol) * scale`` (a guard
against stopping on a Ritz value that is passing by an interior eigenvalue), where ``gap_i``
is the distance from ``theta_i`` to the other Ritz values (Parlett 1998, ch. 11). From a cold
(random) start, convergence is declared only after ``min_cold`` (default ``2k + 10``) products. The loop
always stops at ``max_matvec`` products.

Cost: at most ``max_matvec`` operator products; O(max_basis * P) memory for ``Q`` (fp32 for
fp32 operators; only ``T`` is float64); O(P) work per ordinary step, O(m P) on a full
reorthogonalisation, a restart, and once at the end for the eigenvectors ``S_k^T Q``.

Failure modes: ``k`` > P or bad ``init`` shape raise ``ValueError``; hitting ``max_matvec``
returns ``converged=False`` with a reason. An invariant subspace (breakdown) is completed
with random vectors from ``generator``; a basis that spans the whole space is exact. A
single start vector cannot separate a repeated eigenvalue: its second copy is found only
through the random completion after breakdown.

Example::

    A = torch.randn(50, 50, dtype=torch.float64); A = A + A.T
    res = lanczos_top(lambda v: A @ v, 50, k=2, dtype=torch.float64)
    res.eigenvalues  # ~ torch.linalg.eigvalsh(A)[-2:].flip(0)
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch

__all__ = ["LanczosResult", "lanczos_top"]

_CHUNK = 1 << 16  # columns per block of the in-place restart


class LanczosResult(NamedTuple):
    """Top-k Ritz pairs: values (k,) descending, vectors (k, P), residual norms (k,)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    n_matvec: int
    converged: bool
    reason: str


def _local(t: torch.Tensor) -> torch.Tensor:
    return t


def _norm(f: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] = _local) -> float:
    if reduce is _local:
        return float(torch.linalg.vector_norm(f))
    return math.sqrt(float(reduce(torch.dot(f, f).double().reshape(1)).item()))


def _full_orth(f: torch.Tensor, Q: torch.Tensor,
               reduce: Callable[[torch.Tensor], torch.Tensor] = _local) -> torch.Tensor:
    """``f`` minus its projection on the rows of ``Q``, in place (CGS, a second pass if needed);
    ``reduce`` sums partial inner products over the ranks holding parts of the vectors."""
    if Q.shape[0] == 0:
        return f
    before = _norm(f, reduce)
    f.addmv_(Q.T, reduce(Q @ f), alpha=-1.0)
    if _norm(f, reduce) < 0.5 * before:
        f.addmv_(Q.T, reduce(Q @ f), alpha=-1.0)
    return f


def _restart(Q: torch.Tensor, m: int, S: torch.Tensor) -> None:
    """Rows ``Q[:keep] <- S^T Q[:m]`` in place (S (m, keep)), by blocks of columns."""
    St = S.T.to(Q.dtype)
    for j in range(0, Q.shape[1], _CHUNK):
        block = Q[:m, j:j + _CHUNK]
        Q[: St.shape[0], j:j + _CHUNK] = St @ block


def _check_args(dim, k, tol, max_matvec, max_basis) -> int:
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
    return max_basis


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
    min_cold: int | None = None,
    allreduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LanczosResult:
    """The ``k`` largest algebraic eigenpairs of the symmetric operator ``matvec`` on R^dim.

    Args:
        matvec: ``v (dim,) -> A v (dim,)``, symmetric; it must not modify ``v``.
        dim: P, the dimension.
        k: number of wanted eigenpairs, 1 <= k <= dim.
        tol: relative tolerance (see the module docstring), > 0.
        max_matvec: hard limit on products, >= 1.
        init: warm start, (dim,) or (j, dim) vectors (e.g. the previous eigenvectors); the
            Krylov space starts from their normalised sum (random from ``generator`` when None
            or when the sum vanishes).
        generator: source of random start / completion vectors (a fresh default-seeded
            generator when None, so results are reproducible).
        device, dtype: of the vectors.
        max_basis: basis size that triggers a thick restart (default max(30, 3k)).
        min_cold: products before convergence may be declared from a random start (default
            ``2k + 10``; at least ``k + 1``).
        allreduce: for vectors split across ranks (each rank holds ``dim`` of the entries,
            e.g. its shards of FSDP parameters): sums a tensor over the ranks, in place, and
            returns it (``torch.distributed.all_reduce``); every inner product and norm goes
            through it, and the stopping rule sees the total dimension. ``None``: one process
            holds the whole vector. Every rank must call this function together.

    Returns:
        :class:`LanczosResult`; eigenvectors orthonormal rows, shape (k, dim).
    """
    reduce = _local if allreduce is None else allreduce
    total = dim if allreduce is None else int(allreduce(torch.tensor([float(dim)], dtype=torch.float64)).item())
    max_basis = _check_args(total, k, tol, max_matvec, max_basis)
    if generator is None:
        generator = torch.Generator()
    start: torch.Tensor | None = None
    if init is not None:
        init = torch.as_tensor(init)
        if init.dim() == 1:
            init = init[None]
        if init.dim() != 2 or init.shape[1] != dim:
            raise ValueError(f"init must have shape ({dim},) or (j, {dim}); got {tuple(init.shape)}")
        rows = [r.to(device=device, dtype=dtype) for r in init[:k]]
        finite = reduce(torch.tensor([float(r.sum()) for r in rows] or [0.0], dtype=torch.float64))
        rows = [r for r, s in zip(rows, finite.tolist()) if math.isfinite(s)]
        norms = [_norm(r, reduce) for r in rows]
        rows = [r / n for r, n in zip(rows, norms) if n > 0]
        if rows:
            start = torch.stack(rows).sum(0)
    eps = torch.finfo(dtype).eps
    cap = min(max_basis, total)
    Q = torch.empty(cap, dim, device=device, dtype=dtype)
    T = np.zeros((cap, cap))  # float64, small: numpy (no per-op tensor overhead)
    b = np.zeros(cap)  # A Q[:m]^T = Q[:m]^T T + Q[m] b^T

    def rand() -> torch.Tensor:
        return torch.randn(dim, generator=generator, device=generator.device, dtype=dtype).to(device)

    def place(v: torch.Tensor, m: int) -> bool:
        """Orthonormalise ``v`` against Q[:m] into Q[m]; False if it lies in their span."""
        before = _norm(v, reduce)
        if before == 0.0 or not math.isfinite(before):
            return False
        v = _full_orth(v.clone(), Q[:m], reduce)
        after = _norm(v, reduce)
        if after <= 1e-6 * before:
            return False
        torch.div(v, after, out=Q[m])
        return True

    warm = start is not None and place(start, 0)
    while not warm and not place(rand(), 0):
        pass
    if min_cold is None:
        min_cold = 2 * k + 10
    elif isinstance(min_cold, bool) or not isinstance(min_cold, int) or min_cold < k + 1:
        raise ValueError(f"min_cold must be an int >= k + 1 = {k + 1}; got {min_cold!r}")
    min_basis = 1 if warm else min(total, min_cold)
    m, n, arrow, anorm = 0, 0, 0, 0.0
    prev_theta: np.ndarray | None = None

    def vectors(S: np.ndarray, m: int) -> torch.Tensor:
        return torch.from_numpy(S.T.copy()).to(device=device, dtype=dtype) @ Q[:m]

    def values(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x.copy()).to(dtype)

    while True:
        # one Lanczos step on q = Q[m]: T column, the new residual direction f, b
        q = Q[m]
        f = matvec(q).to(device=device, dtype=dtype)
        n += 1
        alpha = float(reduce(torch.dot(q, f).double().reshape(1)).item())
        T[m, m] = alpha
        lo = max(m - 1, 0) if arrow == 0 else 0  # b is nonzero on Q[lo:m]: one entry, or the arrow
        coef = np.append(b[lo:m], alpha)
        T[lo:m, m] = T[m, lo:m] = b[lo:m]
        f.addmv_(Q[lo:m + 1].T, torch.from_numpy(coef).to(device=device, dtype=dtype), alpha=-1.0)
        m += 1
        b[:] = 0.0
        beta = _norm(f, reduce)
        theta, S = np.linalg.eigh(T[:m, :m])
        theta, S = theta[::-1], S[:, ::-1]
        scale = max(float(np.abs(theta).max()), torch.finfo(dtype).tiny)
        anorm = max(anorm, scale, float(np.linalg.norm(coef)))  # <= ||A||
        breakdown = beta <= 10 * eps * anorm or not math.isfinite(beta)
        if breakdown:
            beta = 0.0
        b[m - 1] = beta
        res_all = np.abs(S[m - 1] * beta)
        kk = min(k, m)
        res = res_all[:kk]
        thr = tol * scale
        if m > 1:
            diff = np.abs(theta[:kk, None] - theta[None, :])
            diff[np.arange(kk), np.arange(kk)] = np.inf
            with np.errstate(divide="ignore", invalid="ignore"):
                est = np.minimum(res, res**2 / diff.min(axis=1))
        else:
            est = res
        moved = (
            np.abs(theta[:kk] - prev_theta[:kk]) if prev_theta is not None and prev_theta.size >= kk
            else np.full(kk, np.inf)
        )
        done = (res <= thr) | ((est <= thr) & (moved <= thr) & (res <= math.sqrt(tol) * scale))
        exact = m >= total
        stop = kk == k and (bool(done.all() and n >= min_basis) or exact)
        if stop or n >= max_matvec:
            Y = vectors(S[:, :kk], m)
            if stop:
                return LanczosResult(values(theta[:k]), Y, values(res), n, True, "")
            worst = float((res / scale).max()) if kk == k else float("nan")
            reason = (
                f"max_hvp={max_matvec} reached before convergence "
                f"(largest relative residual {worst:.2e}, tol {tol:.1e})"
            )
            if kk < k:
                reason = f"max_hvp={max_matvec} reached with only {kk} of k={k} Ritz pairs"
                Y = torch.cat([Y, torch.full((k - kk, dim), float("nan"), device=device, dtype=dtype)])
                theta = np.concatenate([theta[:kk], np.full(k - kk, np.nan)])
                res = np.concatenate([res, np.full(k - kk, np.nan)])
            return LanczosResult(values(theta[:k]), Y, values(res), n, False, reason)
        prev_theta = theta.copy()
        full = arrow > 0 or bool((res_all <= math.sqrt(eps) * anorm).any())
        arrow = 0
        if m >= cap:  # thick restart: keep the top Ritz vectors (no products)
            keep = min(m, max(k + 1, max_basis // 2))
            _restart(Q, m, torch.from_numpy(S[:, :keep].copy()))
            T[:] = 0.0
            T[np.arange(keep), np.arange(keep)] = theta[:keep]
            b[:keep] = S[m - 1, :keep] * beta
            b[keep:] = 0.0
            m, arrow, full = keep, keep, True
        if not breakdown:
            if full:
                _full_orth(f, Q[:m], reduce)
                beta_after = _norm(f, reduce)
                if beta_after > 1e-6 * beta:
                    torch.div(f, beta_after, out=Q[m])
                    continue
            else:
                torch.div(f, beta, out=Q[m])
                continue
        b[:] = 0.0  # an invariant subspace: continue from a random vector orthogonal to it
        arrow = 0
        if not (place(rand(), m) or place(rand(), m)):
            reason = "the basis could not be extended (numerical breakdown)"
            return LanczosResult(values(theta[:kk]), vectors(S[:, :kk], m), values(res), n, False, reason)
