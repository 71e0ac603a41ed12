"""The timed training loop the benchmarks share: SGD on a model, cycling through batches."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch


def sgd_steps(model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
              lr: float) -> Callable[[int], float]:
    """``train(n)``: ``n`` cross-entropy SGD steps over ``batches`` (cycled), wall seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def train(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            x, y = batches[i % len(batches)]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return time.perf_counter() - t0

    return train
