"""EquivarianceFamily: metric keys and values on closed forms and a circular CNN, per-layer and
Lie-derivative entries, per-transform failures, the observer effect (bitwise), state_dict and
every raise."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor.equivariance import fourier_shift
from geomonitor.monitor.families.equivariance import EquivarianceFamily, probe_inputs
from geomonitor.monitor.family import Context
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every


def ctx(model, batch, optimizer=None):
    return Context(model, 1, batch, lambda: {}, optimizer=optimizer)


def roll(s, dims=(-2, -1)):
    return lambda x: torch.roll(x, (s, s), dims=dims)


class Net(nn.Module):
    """Circular convolutions, BatchNorm, dropout and global average pooling: roll invariant in
    eval mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(1, 6, 3, padding=1, padding_mode="circular")
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.pool(self.drop(torch.relu(self.bn(self.c1(x))))).flatten(1))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 8, 8, generator=g), torch.randint(0, 4, (12,), generator=g)


class Double(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.w * x


def test_keys_and_closed_form_values():
    x = torch.randn(6, 3)
    fam = EquivarianceFamily(Every(n_steps=1), {"neg": (lambda z: -z, None), "neg_eq": (lambda z: -z, lambda y: -y)},
                             flows={"scale": (lambda z, t: z * torch.exp(t), None)})
    m = fam.run(ctx(Double(), x)).metrics
    assert m[metric_key("equivariance", "neg", "output")] == pytest.approx(2.0)
    assert m[metric_key("equivariance", "neg_eq", "output")] == 0.0
    # d/dt 2 x e^t at 0 = 2x: mean norm 2 ||x_i||
    assert m[metric_key("equivariance", "scale", "lie_derivative")] == pytest.approx(
        float(2 * x.double().norm(dim=1).mean()), rel=1e-6)


def test_half_precision_model_measured_in_float32():
    x = torch.randn(6, 3).to(torch.bfloat16)
    model = Double().to(torch.bfloat16)
    fam = EquivarianceFamily(Every(n_steps=1), {"neg": (lambda z: -z, None)},
                             flows={"scale": (lambda z, t: z * torch.exp(t), None)})
    out = fam.run(ctx(model, x))
    assert not out.errors and out.metrics[metric_key("equivariance", "neg", "output")] == pytest.approx(2.0)
    assert model.w.dtype == torch.bfloat16  # the user's model keeps its dtype


def test_cnn_layers_and_lie(batch):
    fam = EquivarianceFamily(
        Every(n_steps=1), {"shift1": (roll(1), None), "shift1_map": (roll(1), None)},
        {"shift1": {"c1": roll(1), "bn": roll(1), "pool": None}},
        flows={"subpixel": (lambda x, t: fourier_shift(x, t, dim=-1), None)})
    model = Net().train()
    assert fam.setup(model) is None
    m = fam.run(ctx(model, batch)).metrics
    assert set(m) == {metric_key("equivariance", "shift1", s) for s in ("output", "c1", "bn", "pool")} | {
        metric_key("equivariance", "shift1_map", "output"), metric_key("equivariance", "subpixel", "lie_derivative")}
    assert max(v for k, v in m.items() if "subpixel" not in k) < 1e-6  # eval mode: exactly invariant
    assert m[metric_key("equivariance", "subpixel", "lie_derivative")] > 1e-4  # ReLU: not for sub-pixel shifts


def test_failures_are_per_transform(batch):
    fam = EquivarianceFamily(Every(n_steps=1), {"bad": (roll(1), lambda y: y[:, :2]), "good": (roll(1), None)},
                             flows={"nondiff": (lambda x, t: torch.roll(x, int(t), -1), None)})
    out = fam.run(ctx(Net(), batch))
    assert list(out.metrics) == [metric_key("equivariance", "good", "output")]
    assert len(out.errors) == 2 and "the output action must match the input action" in str(out.errors[0])
    assert "the flow does not move x or is not differentiable in t" in str(out.errors[1])


def test_observer_effect_is_nil(batch):
    model = Net().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = batch
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    fam = EquivarianceFamily(Every(n_steps=1), {"s": (roll(1), None)}, {"s": {"c1": roll(1)}},
                             flows={"f": (lambda z, t: fourier_shift(z, t), None)})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    ostate = copy.deepcopy(opt.state_dict())
    rng, nps, pys = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    out = fam.run(ctx(model, batch, opt))
    assert not out.errors
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert all(m.training for m in model.modules()) and not model.c1._forward_hooks
    after = opt.state_dict()
    assert all(torch.equal(ostate["state"][i][k], after["state"][i][k]) for i in ostate["state"] for k in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(rng, torch.get_rng_state()) and (nps == np.random.get_state()[1]).all() and pys == random.getstate()


def test_setup_unknown_layer_and_inputs(batch):
    fam = EquivarianceFamily(Every(n_steps=1), {"s": (roll(1), None)}, {"s": {"nope": None}})
    assert "layers ['nope'] are not modules of the model" in fam.setup(Net())
    assert probe_inputs(batch) is batch[0] and probe_inputs(batch[0]) is batch[0]
    with pytest.raises(TypeError, match="cannot find the model input in a probe batch of type dict"):
        probe_inputs({"x": batch[0]})
    fam = EquivarianceFamily(Every(n_steps=1), {"s": (roll(1), None)}, input_fn=lambda b: b["pixels"],
                             forward=lambda m, x: m(x) * 1.0)
    assert fam.run(ctx(Net(), {"pixels": batch[0]})).metrics[metric_key("equivariance", "s", "output")] < 1e-6


def test_state_dict_round_trip():
    fam = EquivarianceFamily(Every(n_steps=1), {"s": (roll(1), None)})
    assert fam.state_dict() == {}
    fam.load_state_dict(fam.state_dict())


ok = (lambda x: x, None)


@pytest.mark.parametrize("args, kwargs, msg", [
    (({},), {}, "needs at least one transform or flow, got none"),
    (([1],), {}, "transforms must be a mapping name -> \\(action_in, action_out or None\\), got list"),
    (({"a/b": ok},), {}, "transforms names must be non-empty str without '/', got 'a/b'"),
    (({"": ok},), {}, "transforms names must be non-empty str without '/', got ''"),
    (({"a": (1, None)},), {}, r"transforms\['a'\] must be a pair \(callable, callable or None\)"),
    (({"a": ok}, {"b": {"c1": None}}), {}, "layer_transforms key 'b' is not one of the transforms \\['a'\\]"),
    (({"a": ok}, {"a": {}}), {}, r"layer_transforms\['a'\] must be a non-empty mapping"),
    (({"a": ok}, {"a": {"output": None}}), {}, "a layer may not be called 'output'"),
    (({"a": ok}, {"a": {"lie_derivative": None}}), {}, "a layer may not be called 'lie_derivative'"),
    (({"a": ok}, {"a": {"c1": 5}}), {}, r"layer_transforms\['a'\]\['c1'\] must be callable or None, got 5"),
    (({"a": ok},), {"flows": {"f": (None, None)}}, r"flows\['f'\] must be a pair"),
    (({"a": ok},), {"input_fn": 1}, "input_fn must be callable or None, got 1"),
    (({"a": ok},), {"forward": "m"}, "forward must be callable or None, got 'm'"),
])
def test_bad_arguments(args, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        EquivarianceFamily(Every(n_steps=1), *args, **kwargs)
