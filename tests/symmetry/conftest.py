"""The symmetry tests run tiny tensors: one intra-op thread avoids thread contention on a
shared machine (the previous count is restored after each test)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
