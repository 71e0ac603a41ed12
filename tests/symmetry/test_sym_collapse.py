"""Neural collapse: NC1 against a dense numpy computation of Tr(Sigma_W Sigma_B^+)/K, exact
values on a simplex ETF, NC4 by brute force, the unconstrained-features model (Zhu et al. 2021)
collapsing under gradient descent, and every error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geomonitor.symmetry import neural_collapse


def _nc1_numpy(H, y):
    """Papyan, Han & Donoho 2020: Sigma_W over all samples, Sigma_B over the K class means."""
    H = np.asarray(H, dtype=np.float64)
    classes = np.unique(y)
    mu_g = H.mean(axis=0)
    means = np.stack([H[y == c].mean(axis=0) for c in classes])
    Sw = sum(np.outer(h - means[np.searchsorted(classes, c)], h - means[np.searchsorted(classes, c)])
             for h, c in zip(H, y)) / len(H)
    Sb = sum(np.outer(m - mu_g, m - mu_g) for m in means) / len(classes)
    return float(np.trace(Sw @ np.linalg.pinv(Sb)) / len(classes))


@pytest.mark.parametrize("K,D,n,spread", [(3, 5, 20, 0.5), (5, 3, 12, 1.0), (4, 10, 7, 0.1)])
def test_nc1_against_numpy_on_constructed_clusters(K, D, n, spread):
    rng = np.random.default_rng(K * D)
    centres = rng.standard_normal((K, D)) * 3
    counts = [n + 3 * c for c in range(K)]  # unbalanced classes
    y = np.concatenate([[c] * m for c, m in enumerate(counts)])
    H = centres[y] + spread * rng.standard_normal((len(y), D))
    nc = neural_collapse(torch.as_tensor(H), torch.as_tensor(y))
    assert nc.n_classes == K and nc.nc3 is None and nc.nc4 is None
    assert nc.nc1 == pytest.approx(_nc1_numpy(H, y), rel=1e-8)
    # float32 input agrees to float32 accuracy
    assert neural_collapse(torch.as_tensor(H, dtype=torch.float32), torch.as_tensor(y)).nc1 == \
        pytest.approx(_nc1_numpy(H, y), rel=1e-3)


def test_nc1_ignores_labels_absent_and_scales_with_within_class_variance():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 2, 7], 30)  # label values need not be contiguous
    centres = np.eye(3, 6) * 5
    noise = rng.standard_normal((90, 6))
    for c in (0, 2, 7):  # zero mean within each class: the class means stay the centres
        noise[y == c] -= noise[y == c].mean(axis=0)
    base = centres[np.searchsorted([0, 2, 7], y)]
    lo = neural_collapse(torch.as_tensor(base + 0.1 * noise), torch.as_tensor(y))
    hi = neural_collapse(torch.as_tensor(base + 0.2 * noise), torch.as_tensor(y))
    assert lo.n_classes == 3
    assert hi.nc1 == pytest.approx(4 * lo.nc1, rel=1e-9)  # Sigma_W scales by 4, Sigma_B fixed


def _simplex_etf(K, D, scale=2.0):
    M = np.eye(K) - np.ones((K, K)) / K
    M = M * np.sqrt(K / (K - 1)) * scale
    return np.hstack([M, np.zeros((K, D - K))])


def test_simplex_etf_is_fully_collapsed():
    K, D = 4, 6
    M = _simplex_etf(K, D)
    y = np.repeat(np.arange(K), 5)
    H = torch.as_tensor(M[y] + 1.5 * np.ones(D))  # the global mean can be anywhere
    W = torch.as_tensor(0.3 * M)                  # self-dual classifier
    nc = neural_collapse(H, torch.as_tensor(y), W, torch.zeros(K, dtype=torch.float64))
    assert nc.nc1 == pytest.approx(0.0, abs=1e-20)
    assert nc.nc2_equinorm == pytest.approx(0.0, abs=1e-12)
    assert nc.nc2_equiangular == pytest.approx(0.0, abs=1e-12)
    assert nc.nc3 == pytest.approx(0.0, abs=1e-12)
    assert nc.nc4 == 0.0


def test_nc2_nc3_closed_forms_off_the_etf():
    # two classes of sizes 1 and 3: the centred means are antipodal but of different norms
    H = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 1])
    nc = neural_collapse(H, y)
    # mu_G = (1, 0): centred means (3, 0), (-1, 0); norms 3, 1 -> std/mean = 1/2; cos = -1 = -1/(K-1)
    assert nc.nc2_equinorm == pytest.approx(0.5)
    assert nc.nc2_equiangular == pytest.approx(0.0, abs=1e-12)
    # NC3 with W orthogonal to the means: || W/|W| - M/|M| ||^2 = 2
    W = torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    assert neural_collapse(H, y, W).nc3 == pytest.approx(2.0)


def test_nc4_against_brute_force():
    rng = np.random.default_rng(3)
    K, D = 3, 4
    y = rng.integers(0, K, 60)
    H = rng.standard_normal((60, D)) + np.eye(K, D)[y]
    W, b = rng.standard_normal((5, D)), rng.standard_normal(5)  # 5 classifier rows, 3 classes present
    means = np.stack([H[y == c].mean(0) for c in range(K)])
    ncc = np.array([np.argmin(((means - h) ** 2).sum(1)) for h in H])
    clf = (H @ W.T + b).argmax(1)
    nc = neural_collapse(torch.as_tensor(H), torch.as_tensor(y), torch.as_tensor(W), torch.as_tensor(b))
    assert nc.nc4 == pytest.approx(float((ncc != clf).mean()))
    assert 0 < nc.nc4 < 1


def test_unconstrained_features_model_collapses_under_gradient_descent():
    """Zhu et al. 2021 ("A geometric analysis of neural collapse with unconstrained features"):
    free features H and a linear classifier, cross-entropy and weight decay, gradient descent.
    Every global minimiser is a simplex ETF; NC1, NC2 and NC3 fall along the way."""
    g = torch.Generator().manual_seed(0)
    K, n, D, lam = 4, 10, 8, 5e-3
    y = torch.arange(K).repeat_interleave(n)
    H = torch.randn(K * n, D, generator=g, dtype=torch.float64).requires_grad_()
    W = torch.randn(K, D, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([H, W, b], lr=0.5)
    seen = {}
    for t in range(601):
        if t in (10, 100, 600):
            seen[t] = neural_collapse(H.detach(), y, W.detach(), b.detach())
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(H @ W.T + b, y) + lam / 2 * (
            W.pow(2).sum() + H.pow(2).sum() / (K * n) + b.pow(2).sum())
        loss.backward()
        opt.step()
    for field in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc3"):
        a, m, z = (getattr(seen[t], field) for t in (10, 100, 600))
        assert a > m > z, (field, a, m, z)
    assert seen[600].nc1 < 0.05 * seen[10].nc1
    assert seen[600].nc3 < 0.1 * seen[10].nc3
    assert seen[600].nc4 == 0.0


@pytest.mark.parametrize("args,match", [
    ((torch.ones(4, 2), torch.zeros(4, dtype=torch.long)), r"labels must hold at least 2 classes, got 1"),
    ((torch.ones(4, 2), torch.tensor([0, 1, 0])), r"labels must have one entry per feature row \(4\), got 3"),
    ((torch.ones(4, 2), torch.tensor([0.0, 1.0, 0.0, 1.0])), r"labels must be a 1-D integer tensor"),
    ((torch.ones(4, 2), torch.tensor([0, -1, 0, 1])), r"labels must be >= 0, got minimum -1"),
    ((torch.tensor([[float("nan"), 0.0], [1.0, 1.0]]), torch.tensor([0, 1])), r"features has 1 NaN or Inf"),
    ((torch.ones(4), torch.tensor([0, 1, 0, 1])), r"features must have 2 dimensions"),
    ((torch.ones(4, 2), torch.tensor([0, 1, 0, 1])), r"the class means of features all coincide"),
    ((torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]), torch.tensor([0, 1, 2])),
     r"a centred class mean of features has norm zero"),
    ((torch.eye(2), torch.tensor([0, 1]), torch.ones(2, 3)), r"weight must have shape \(classes, 2\)"),
    ((torch.eye(2), torch.tensor([0, 2]), torch.ones(2, 2)), r"labels must index rows of weight \(2 classes\), got label 2"),
    ((torch.eye(2), torch.tensor([0, 1]), torch.zeros(2, 2)), r"weight rows of the classes present are all zero"),
    ((torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.ones(3)), r"bias must have shape \(2,\)"),
])
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        neural_collapse(*args)
