"""Small models and a dense float64 Hessian reference for the sharpness tests."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, hessian


def dense_hessian(model: nn.Module, loss_of_output, x: torch.Tensor) -> torch.Tensor:
    """The (P, P) Hessian in float64, by torch.func.hessian on a float64 copy of the model.

    Only parameters with requires_grad, in ``model.parameters()`` order, flattened.
    """
    m64 = copy.deepcopy(model).double()
    names = [n for n, p in m64.named_parameters() if p.requires_grad]
    fixed = {n: p.detach() for n, p in m64.named_parameters() if not p.requires_grad}
    fixed.update({n: b for n, b in m64.named_buffers()})
    shapes = [dict(m64.named_parameters())[n].shape for n in names]
    sizes = [s.numel() for s in shapes]
    flat0 = torch.cat([dict(m64.named_parameters())[n].detach().reshape(-1) for n in names])
    x64 = x.double()

    def f(flat):
        parts = torch.split(flat, sizes)
        ps = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        ps.update(fixed)
        return loss_of_output(functional_call(m64, ps, (x64,)))

    return hessian(f)(flat0)


def tanh_mlp(gen):
    return nn.Sequential(nn.Linear(8, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 3))


def relu_mlp(gen):
    return nn.Sequential(nn.Linear(8, 28), nn.ReLU(), nn.Linear(28, 28), nn.ReLU(), nn.Linear(28, 3))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        x = torch.tanh(self.c1(x.view(-1, 1, 8, 8)))
        x = torch.tanh(self.c2(x))
        return self.fc(x.flatten(1))


def cnn(gen):
    return SmallCNN()


def bn_mlp(gen):
    m = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.Tanh(), nn.Linear(32, 3))
    with torch.no_grad():
        m[1].running_mean.normal_(0, 0.3, generator=gen)
        m[1].running_var.uniform_(0.5, 2.0, generator=gen)
    return m.eval()


def make(name: str, seed: int = 0, n: int = 64):
    """(model, x, y, loss_of_output) with cross-entropy on random labels; CNN takes 64-dim x."""
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # test helper only: nn.Module init uses the global stream
    model = {"tanh": tanh_mlp, "relu": relu_mlp, "cnn": cnn, "bn": bn_mlp}[name](gen)
    torch.random.set_rng_state(torch_state)
    d = 64 if name == "cnn" else 8
    x = torch.randn(n, d, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    loss_of_output = lambda out: nn.functional.cross_entropy(out, y)  # noqa: E731
    return model, x, y, loss_of_output
