"""Hessian spectral density by stochastic Lanczos quadrature (SLQ).

Definition: the spectral density of the (P, P) loss Hessian ``H`` with eigenpairs
:math:`(\\lambda_k, u_k)` is the measure :math:`\\mu = \\frac1P \\sum_k \\delta_{\\lambda_k}`.
For a unit vector ``q`` the measure :math:`\\mu_q = \\sum_k (u_k^\\top q)^2 \\delta_{\\lambda_k}`
has :math:`E[\\mu_q] = \\mu` when ``q`` is a normalised Rademacher or Gaussian vector. ``m``
Lanczos steps from ``q`` give the tridiagonal ``T`` (m, m), whose eigenpairs
:math:`(\\theta_j, s_j)` are the nodes and weights :math:`\\tau_j = s_{1j}^2` of the m-point
Gauss quadrature of :math:`\\mu_q`: :math:`\\int f\\,d\\mu_q \\approx \\sum_j \\tau_j f(\\theta_j)`,
exact for polynomials of degree < 2m (Golub & Meurant, "Matrices, Moments and Quadrature with
Applications", 2010). Averaging over ``n_vectors`` independent vectors estimates ``mu``
(Ubaru, Chen & Saad 2017, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature",
SIAM J. Matrix Anal. Appl. 38(4); Ghorbani, Krishnan & Xiao 2019, "An investigation into
neural net optimization via Hessian eigenvalue density", ICML; Papyan 2019, "Measurements of
three-level hierarchical structure in the outliers in the spectrum of deepnet Hessians", ICML).

Derived quantities:

* ``trace``: :math:`P \\sum_j \\tau_j \\theta_j = P\\, e_1^\\top T e_1 = P\\, q^\\top H q`, averaged
  over the vectors: with Rademacher vectors this *is* Hutchinson's estimator
  (:func:`geomonitor.sharpness.trace.hessian_trace`) on the same probes;
* ``density(grid, sigma)``: :math:`\\sum_j \\tau_j\\, \\mathcal N(x; \\theta_j, \\sigma^2)`, which
  integrates to 1 (Ghorbani et al. 2019, eq. 4);
* ``n_outliers(gap)``: eigenvalues separated from the bulk. Rule, per vector, with its Ritz
  values :math:`\\theta_1 \\ge \\dots \\ge \\theta_m` and range :math:`R = \\theta_1 - \\theta_m`:
  the outliers are :math:`\\theta_1..\\theta_n` for the largest ``n`` with
  :math:`\\theta_n - \\theta_{n+1} \\ge \\texttt{gap} \\cdot R` and :math:`\\theta_{n+1}` at or
  above the median of the vector's quadrature measure (the gap lies above the bulk, not below
  it); 0 when there is no such gap. The count reported is the lower median over vectors.
  Extreme isolated eigenvalues are the first Ritz values Lanczos resolves (Kaniel-Paige
  theory), so a few tens of steps resolve them; outliers closer to the bulk than ``gap * R``
  are counted as bulk.

Orthogonality: every new Lanczos vector is reorthogonalised against all previous ones (two
passes of classical Gram-Schmidt), so no spurious copies of converged Ritz values appear; the
basis (m, P) is kept in the operator's dtype, ``T`` in float64. A breakdown (``beta`` ~ 0: the
Krylov space is invariant) ends that vector early; its quadrature is then exact.

Cost: ``n_vectors * min(n_iter, P)`` Hessian-vector products (:mod:`.hvp`: one double
backward each; :mod:`.fd_hvp`: two forward + backward passes each), O(n_iter * P) memory for
the basis and O(n_iter^2 P) work for the reorthogonalisation per vector.

Failure modes: ``ValueError`` for bad arguments and for the operators' own errors (no
trainable parameter, non-finite or parameter-free loss). The model, its gradients, buffers
and every RNG stream are left as they were (:func:`geomonitor.sharpness.isolation.isolated`).

Example::

    sd = spectral_density(model, lambda: F.cross_entropy(model(x), y), n_iter=60, n_vectors=8)
    sd.nodes.max()                          # ~ lambda_max
    sd.trace                                # Hutchinson estimate of tr(H)
    grid = torch.linspace(-1, 5, 400)
    sd.density(grid, sigma=0.05)            # (400,), integrates to ~1
    sd.n_outliers()                         # eigenvalues above the bulk
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from geomonitor.sharpness.fd_hvp import FiniteDifferenceHVP
from geomonitor.sharpness.hvp import HVPOperator, trainable
from geomonitor.sharpness.isolation import isolated
from geomonitor.sharpness.spectrum import choose_hvp

__all__ = ["PROBES", "SpectralDensity", "spectral_density"]

#: The distributions of the start vectors.
PROBES = ("rademacher", "gaussian")


@dataclass(frozen=True)
class SpectralDensity:
    """Result of :func:`spectral_density` (see the module doc).

    Attributes:
        nodes_per_vector: one float64 tensor (m_i,) of Ritz values per start vector, ascending.
        weights_per_vector: the matching quadrature weights (m_i,), each summing to 1.
        dim: P, the number of measured parameters.
        n_hvp: Hessian-vector products used.
        hvp: the product backend (``"exact"`` or ``"fd"``).
        loss: the loss value at which the Hessian was taken.
    """

    nodes_per_vector: tuple[torch.Tensor, ...]
    weights_per_vector: tuple[torch.Tensor, ...]
    dim: int
    n_hvp: int
    hvp: str
    loss: float

    @property
    def nodes(self) -> torch.Tensor:
        """All Ritz values, pooled over the vectors: (sum m_i,) float64."""
        return torch.cat(self.nodes_per_vector)

    @property
    def weights(self) -> torch.Tensor:
        """Pooled weights (the per-vector ones divided by ``n_vectors``): sum to 1."""
        return torch.cat(self.weights_per_vector) / len(self.weights_per_vector)

    def _traces(self) -> torch.Tensor:
        return torch.stack([self.dim * (w * t).sum() for t, w in zip(self.nodes_per_vector, self.weights_per_vector)])

    @property
    def trace(self) -> float:
        """Estimate of tr(H): the mean over vectors of ``P * sum_j tau_j theta_j``."""
        return float(self._traces().mean())

    @property
    def trace_stderr(self) -> float | None:
        """Standard error of :attr:`trace` over the vectors; None with a single vector."""
        per = self._traces()
        return None if per.numel() < 2 else float(per.std() / math.sqrt(per.numel()))

    def density(self, grid: Any, sigma: float) -> torch.Tensor:
        """The Gaussian-smoothed density on ``grid`` (1-D, finite): float64, same shape.

        Raises:
            ValueError: ``sigma`` not a positive finite float; ``grid`` not 1-D or not finite.
        """
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a positive finite float; got {sigma!r}")
        x = torch.as_tensor(grid, dtype=torch.float64)
        if x.dim() != 1 or not bool(torch.isfinite(x).all()):
            raise ValueError(f"grid must be a 1-D array of finite values; got shape {tuple(x.shape)}")
        z = (x[:, None] - self.nodes[None, :]) / sigma
        return (torch.exp(-0.5 * z * z) * self.weights).sum(1) / (sigma * math.sqrt(2 * math.pi))

    def n_outliers(self, gap: float = 0.05) -> int:
        """The number of Ritz values separated from the bulk by a relative gap (module doc).

        Raises:
            ValueError: ``gap`` not in (0, 1).
        """
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 < gap < 1:
            raise ValueError(f"gap must be a float in (0, 1); got {gap!r}")
        counts = sorted(_outliers(t.numpy(), w.numpy(), gap)
                        for t, w in zip(self.nodes_per_vector, self.weights_per_vector))
        return counts[(len(counts) - 1) // 2]


def _outliers(theta: np.ndarray, w: np.ndarray, gap: float) -> int:
    """The gap rule on one vector's ascending nodes ``theta`` with weights ``w``."""
    if theta.size < 2:
        return 0
    median = theta[min(int(np.searchsorted(np.cumsum(w), 0.5)), theta.size - 1)]
    desc = theta[::-1]
    big = (desc[:-1] - desc[1:] >= gap * (desc[0] - desc[-1])) & (desc[1:] >= median)
    hits = np.flatnonzero(big)
    return int(hits[-1] + 1) if hits.size else 0


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def _lanczos(op: Callable[[torch.Tensor], torch.Tensor], q: torch.Tensor, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``m`` steps from the unit vector ``q`` with full reorthogonalisation: (nodes, weights, products)."""
    Q = torch.empty(m, q.numel(), device=q.device, dtype=q.dtype)
    Q[0] = q
    alpha, beta = np.zeros(m), np.zeros(m)
    eps, scale, n = torch.finfo(q.dtype).eps, 0.0, 0
    for j in range(m):
        f = op(Q[j]).to(q.dtype)
        n += 1
        alpha[j] = float(torch.dot(Q[j], f))
        for _ in range(2):  # "twice is enough" (Giraud, Langou & Rozloznik 2005)
            f.addmv_(Q[:j + 1].T, Q[:j + 1] @ f, alpha=-1.0)
        b = float(torch.linalg.vector_norm(f))
        scale = max(scale, abs(alpha[j]), b)
        if j + 1 == m or b <= 10 * eps * scale or not math.isfinite(b):
            break
        beta[j] = b
        Q[j + 1] = f / b
    k = j + 1
    T = np.diag(alpha[:k]) + np.diag(beta[:k - 1], 1) + np.diag(beta[:k - 1], -1)
    theta, S = np.linalg.eigh(T)
    weights = S[0] ** 2
    return theta, weights / weights.sum(), n


def spectral_density(
    model: torch.nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    *,
    n_iter: int = 80,
    n_vectors: int = 8,
    seed: int = 0,
    hvp: str = "auto",
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    """The Hessian eigenvalue density of ``loss_fn()`` w.r.t. the trainable parameters of ``model``.

    Args:
        model: the network (a DDP / DataParallel wrapper is unwrapped); left unchanged.
        loss_fn: zero-argument callable recomputing the scalar loss of ``model``.
        n_iter: Lanczos steps per vector (at most P are taken), >= 1.
        n_vectors: number of independent start vectors, >= 1.
        seed: seeds a fresh ``torch.Generator`` for the start vectors when ``generator`` is None.
        hvp: ``"auto"`` (:func:`~geomonitor.sharpness.spectrum.choose_hvp`), ``"exact"``
            (double backward) or ``"fd"`` (central differences of the gradient).
        probe: ``"rademacher"`` (entries +-1) or ``"gaussian"`` start vectors.
        generator: source of the start vectors (advanced); overrides ``seed``.

    Returns:
        :class:`SpectralDensity`.

    Raises:
        ValueError: bad arguments; the operators' errors (see :mod:`.hvp`, :mod:`.fd_hvp`).
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    _check_int("n_iter", n_iter)
    _check_int("n_vectors", n_vectors)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}; got {probe!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    backend = choose_hvp(model, hvp)
    gen = torch.Generator().manual_seed(seed) if generator is None else generator
    nodes, weights, n_hvp = [], [], 0
    with isolated(model, double_backward=backend == "exact") as module:
        params = trainable(module, name="model.parameters()")
        op = HVPOperator(loss_fn, params) if backend == "exact" else FiniteDifferenceHVP(loss_fn, params)
        try:
            for _ in range(n_vectors):
                if probe == "rademacher":
                    v = torch.randint(0, 2, (op.dim,), generator=gen, device=gen.device).mul_(2).sub_(1)
                else:
                    v = torch.randn(op.dim, generator=gen, device=gen.device, dtype=torch.float64)
                v = v.to(device=op.device, dtype=op.dtype)
                theta, tau, n = _lanczos(op, v / torch.linalg.vector_norm(v), min(n_iter, op.dim))
                nodes.append(torch.from_numpy(theta))
                weights.append(torch.from_numpy(tau))
                n_hvp += n
            loss = float(op.loss)
        finally:
            op.release()
    return SpectralDensity(tuple(nodes), tuple(weights), op.dim, n_hvp, backend, loss)
