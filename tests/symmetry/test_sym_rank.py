"""Effective rank, stable rank and RankMe against closed forms and a direct numpy computation;
the SVD fallback and every error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomonitor.symmetry import effective_rank, effective_rank_from_singular_values, rankme, stable_rank
from geomonitor.symmetry import _linalg


def _with_singular_values(s, m=7, n=5, seed=0):
    """An (m, n) float64 matrix with the given singular values (random orthogonal factors)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    S = np.zeros((m, n))
    S[: len(s), : len(s)] = np.diag(s)
    return torch.as_tensor(U @ S @ V.T)


@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_r_equal_singular_values_give_effective_rank_r(r):
    M = _with_singular_values([1.7] * r)
    assert effective_rank(M) == pytest.approx(r, rel=1e-9)
    assert stable_rank(M) == pytest.approx(r, rel=1e-9)


def test_two_to_one_gives_exp_of_the_binary_entropy():
    H = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert effective_rank(_with_singular_values([2.0, 1.0])) == pytest.approx(math.exp(H), rel=1e-9)
    assert effective_rank(torch.diag(torch.tensor([2.0, 1.0]))) == pytest.approx(math.exp(H), rel=1e-6)
    assert effective_rank_from_singular_values(torch.tensor([2.0, 1.0, 0.0])) == pytest.approx(math.exp(H))


def test_stable_rank_of_known_matrices():
    assert stable_rank(torch.eye(6)) == pytest.approx(6.0)
    assert stable_rank(torch.ones(4, 9)) == pytest.approx(1.0)  # rank one
    # sigma = (3, 2, 1): (9 + 4 + 1) / 9
    assert stable_rank(_with_singular_values([3.0, 2.0, 1.0])) == pytest.approx(14 / 9, rel=1e-9)
    # conv kernel (out, in, k, k) is the (out, in*k*k) matrix
    w = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = np.linalg.svd(w.reshape(4, -1).numpy(), compute_uv=False)
    assert stable_rank(w) == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=1e-9)


def _rankme_numpy(Z, eps=1e-7):
    s = np.linalg.svd(np.asarray(Z, dtype=np.float64), compute_uv=False)
    p = s / np.abs(s).sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("shape", [(50, 8), (6, 30), (200, 64)])
def test_rankme_against_numpy(shape):
    g = torch.Generator().manual_seed(sum(shape))
    Z = torch.relu(torch.randn(*shape, generator=g) @ torch.randn(shape[1], shape[1], generator=g))
    assert rankme(Z) == pytest.approx(_rankme_numpy(Z.numpy()), rel=1e-5)
    assert rankme(Z, eps=0.0) == pytest.approx(effective_rank(Z), rel=1e-6)


def test_rankme_is_uncentred():
    """A 3-dim cloud around a far-away mean: centred PCA sees 3 directions, RankMe also the mean."""
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.eye(3, 10, dtype=torch.float64)
    Z = Z + 40 * torch.ones(10, dtype=torch.float64)
    centred = Z - Z.mean(0)
    assert rankme(centred) == pytest.approx(_rankme_numpy(centred.numpy()), rel=1e-9)
    assert rankme(Z) == pytest.approx(_rankme_numpy(Z.numpy()), rel=1e-9)
    assert rankme(centred) > 2.9 and rankme(Z) < 2.0  # the mean direction dominates the spectrum


def test_zero_matrix_has_rank_zero_and_half_precision_runs_in_float32():
    assert effective_rank(torch.zeros(3, 4)) == 0.0
    assert stable_rank(torch.zeros(3, 4)) == 0.0
    assert rankme(torch.zeros(5, 4)) == 0.0
    M = _with_singular_values([3.0, 2.0, 1.0]).float()
    assert effective_rank(M.half()) == pytest.approx(effective_rank(M), rel=2e-3)
    assert effective_rank(M.bfloat16()) == pytest.approx(effective_rank(M), rel=2e-2)


def test_svd_is_retried_in_float64_on_the_cpu(monkeypatch):
    real = torch.linalg.svdvals
    seen = []

    def flaky(M):
        seen.append(M.dtype)
        if M.dtype != torch.float64:
            raise torch.linalg.LinAlgError("did not converge")
        return real(M)

    monkeypatch.setattr(torch.linalg, "svdvals", flaky)
    M = torch.diag(torch.tensor([2.0, 1.0]))
    assert effective_rank(M) == pytest.approx(1.8898815748423097, rel=1e-6)
    assert seen == [torch.float32, torch.float64]


def test_svd_failing_twice_is_reported(monkeypatch):
    def broken(M):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "svdvals", broken)
    with pytest.raises(ValueError, match=r"the SVD of M \(shape \(2, 2\)\) did not converge, also in "
                                         r"float64 on the CPU"):
        effective_rank(torch.eye(2))


def test_svd_with_non_finite_values_twice_is_reported(monkeypatch):
    monkeypatch.setattr(torch.linalg, "svdvals", lambda M: torch.full((2,), float("nan"), dtype=M.dtype))
    with pytest.raises(ValueError, match=r"the SVD of Z \(shape \(3, 2\)\) gave non-finite singular values"):
        rankme(torch.ones(3, 2))


def test_lanczos_top_singular_value():
    M = _with_singular_values([5.0, 2.0, 1.0], m=40, n=30)
    g = torch.Generator().manual_seed(0)
    assert _linalg.top_singular_value(M, g) == pytest.approx(5.0, rel=1e-12)
    assert _linalg.top_singular_value(torch.zeros(3, 2), g) == 0.0


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (257, 257), (64, 1), (1, 64)])
def test_lanczos_matches_a_dense_float64_svd_on_gaussian_matrices(shape):
    """Gaussian matrices: sigma_1 and sigma_2 close (the Marchenko-Pastur edge), where the power
    iteration is slow; Lanczos still reaches the float64 SVD's sigma_max to ~1e-10."""
    M = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    ref = np.linalg.svd(M.double().numpy(), compute_uv=False)
    got = _linalg.top_singular_value(M, torch.Generator().manual_seed(2))
    assert got == pytest.approx(ref[0], rel=1e-9)
    assert got <= ref[0] * (1 + 1e-12)  # a Ritz value: a lower bound up to rounding


def test_lanczos_separates_a_close_pair_and_is_seeded():
    M = _with_singular_values([1.0, 1.0 - 1e-6, 0.5, 0.1], m=120, n=90, seed=3)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, b = _linalg.top_singular_value(M, g1), _linalg.top_singular_value(M, g2)
    assert a == b == pytest.approx(1.0, rel=1e-10)
    rng = torch.get_rng_state()
    _linalg.top_singular_value(M, g1)
    assert torch.equal(torch.get_rng_state(), rng)


def test_lanczos_stops_at_max_iter_with_a_lower_bound():
    M = torch.randn(400, 400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s1 = float(np.linalg.svd(M.numpy(), compute_uv=False)[0])
    one = _linalg.top_singular_value(M, torch.Generator().manual_seed(0), max_iter=1)
    few = _linalg.top_singular_value(M, torch.Generator().manual_seed(0), max_iter=5)
    assert one < few < s1 and few < s1 * (1 - 1e-4)  # not converged: a strict lower bound


@pytest.mark.parametrize("kw,match", [
    ({"max_iter": 0}, r"max_iter must be a positive int, got 0"),
    ({"max_iter": 2.5}, r"max_iter must be a positive int, got 2.5"),
    ({"tol": 0.0}, r"tol must be a number in \(0, 1\), got 0.0"),
    ({"tol": True}, r"tol must be a number in \(0, 1\), got True"),
])
def test_lanczos_argument_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _linalg.top_singular_value(torch.eye(3), torch.Generator(), **kw)


@pytest.mark.parametrize("shape", [(200, 150), (150, 200), (16, 8, 3, 3), (1, 30)])
def test_stable_rank_matches_dense_svd_without_an_svd(shape, monkeypatch):
    M = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    s = np.linalg.svd(M.reshape(shape[0], -1).double().numpy(), compute_uv=False)

    def no_svd(*_a, **_k):
        raise AssertionError("stable_rank must not run an SVD")

    monkeypatch.setattr(torch.linalg, "svdvals", no_svd)
    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    monkeypatch.setattr(torch.linalg, "eigvalsh", no_svd)
    assert stable_rank(M) == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=1e-9)
    g = torch.Generator().manual_seed(5)
    assert stable_rank(M, generator=g, tol=1e-3) == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=2e-3)
    assert stable_rank(M.half()) == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=1e-2)
    with pytest.raises(ValueError, match=r"tol must be a number in \(0, 1\), got 2"):
        stable_rank(M, tol=2)


@pytest.mark.parametrize("fn,args,match", [
    (effective_rank, (torch.ones(3),), r"M must have at least 2 dimensions, got shape \(3,\)"),
    (stable_rank, (torch.tensor([[1.0, float("inf")]]),), r"M has 1 NaN or Inf entries"),
    (rankme, (torch.ones(1, 5),), r"Z needs at least 2 samples \(rows\), got shape \(1, 5\)"),
    (rankme, (torch.ones(3, 5), -1.0), r"eps must be a finite number >= 0, got -1.0"),
    (effective_rank_from_singular_values, (torch.tensor([1.0, -1.0]),), r"s must be non-negative"),
    (effective_rank_from_singular_values, (torch.ones(2, 2),), r"s must have 1 dimensions"),
    (effective_rank_from_singular_values, (torch.ones(2),), None),
])
def test_errors(fn, args, match):
    if match is None:
        assert fn(*args) == pytest.approx(2.0)
        with pytest.raises(ValueError, match=r"eps must be a finite number >= 0, got True"):
            fn(*args, eps=True)
        return
    with pytest.raises(ValueError, match=match):
        fn(*args)


@pytest.mark.parametrize("shape", [(8, 200), (300, 12)])
def test_long_matrices_go_through_the_gram_matrix_exactly_enough(shape):
    """Aspect >= GRAM_ASPECT: sqrt(eigvalsh(M M^T)) in float64 against numpy's SVD (within the
    documented absolute error ~1e-8 s_1) on a spectrum spanning 1 .. 1e-6."""
    k = min(shape)
    assert max(shape) >= _linalg.GRAM_ASPECT * k
    s = np.logspace(0, -6, k)
    M = _with_singular_values(list(s), m=shape[0], n=shape[1], seed=1)
    got = _linalg.singular_values(M).numpy()
    assert got.shape == (k,) and np.all(np.diff(got) <= 0)
    np.testing.assert_allclose(got, np.linalg.svd(M.numpy(), compute_uv=False), rtol=0, atol=1e-8)
    assert rankme(M) == pytest.approx(_rankme_numpy(M.numpy()), rel=1e-8)
