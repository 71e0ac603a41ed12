"""The linear-mode-connectivity ordering on sklearn's digits (Frankle et al. 2020; Ainsworth
et al. 2023): two MLPs from one initialisation with different data orders are linearly
connected, two from different initialisations are not, and weight matching removes most of
that barrier."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.connectivity import loss_barrier, weight_matching


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is the fastest
    yield
    torch.set_num_threads(n)


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.as_tensor(X / 16.0, dtype=torch.float32), torch.as_tensor(y)


def _mlp(init_seed: int, hidden: int) -> nn.Sequential:
    m = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                      nn.Linear(hidden, 10))
    g = torch.Generator().manual_seed(init_seed)
    with torch.no_grad():
        for p in m.parameters():
            bound = 1.0 / p.shape[-1] ** 0.5
            p.uniform_(-bound, bound, generator=g)
    return m


def _train(m: nn.Module, X, y, order_seed: int, epochs: int, batch: int = 128) -> nn.Module:
    g = torch.Generator().manual_seed(order_seed)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(m(X[idx]), y[idx]).backward()
            opt.step()
    return m


def _ordering(hidden: int, epochs: int) -> tuple[float, float, float]:
    X, y = _digits()
    a = _train(_mlp(0, hidden), X, y, order_seed=1, epochs=epochs)
    a_same = _train(_mlp(0, hidden), X, y, order_seed=2, epochs=epochs)
    b = _train(_mlp(7, hidden), X, y, order_seed=3, epochs=epochs)
    loss = lambda m: F.cross_entropy(m(X), y)  # noqa: E731
    same = loss_barrier(a, a, a_same, loss).barrier
    naive = loss_barrier(a, a, b, loss).barrier
    matched = loss_barrier(a, a, weight_matching(a, b), loss).barrier
    return same, matched, naive


def test_digits_ordering_fast(one_thread):
    same, matched, naive = _ordering(hidden=32, epochs=4)
    assert naive > 0.2                      # different inits: a real barrier
    assert matched < naive / 3              # weight matching removes most of it
    assert same < 0.05 and same <= matched + 0.02


@pytest.mark.slow
def test_digits_ordering_paper_size(one_thread):
    same, matched, naive = _ordering(hidden=128, epochs=10)  # 64-128-128-10 as in the papers
    assert naive > 0.2 and matched < naive / 5 and same < 0.02 and same <= matched
