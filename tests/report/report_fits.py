"""Small real fits for the report tests, and independent readers of what they wrote."""
from __future__ import annotations

import csv
import functools

import torch


@functools.lru_cache(maxsize=1)
def digits(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


def mlp(seed: int = 0) -> torch.nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


#: families every few steps, small probe: a few seconds on a CPU
FAMILY_OPTIONS = dict(max_overhead=None, probe_size=64, id_every_n_steps=4,
                      sharpness_every_n_steps=4, sharpness_max_hvp=10, topology_every_n_steps=4,
                      topology_landmarks=32, np_every_n_steps=4, symmetry_every_n_steps=4)


def csv_values(path: str) -> dict[tuple[int, str], float]:
    """(step, key) -> value of a CSVLogger ``metrics.csv``, read with the csv module."""
    out = {}
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            for k, v in rec.items():
                if k != "step" and v != "":
                    out[(int(rec["step"]), k)] = float(v)
    return out
