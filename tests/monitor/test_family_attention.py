"""AttentionFamily: exact keys, values against the weights HF GPT-2 returns (eager) and an
explicit logsumexp, per-layer failures, the default-off option, the observer effect
(bitwise-unchanged training through the Monitor) and every raise."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from torch import nn

from geomonitor.monitor import Monitor
from geomonitor.monitor.families import DEFAULTS, AttentionFamily, build_families
from geomonitor.monitor.families.attention import output_logits_of
from geomonitor.monitor.family import Context
from geomonitor.monitor.schedule import Every


def _gpt2():
    pytest.importorskip("transformers")  # the test extra's; the core install has none
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                     attn_pdrop=0.1, resid_pdrop=0.1, embd_pdrop=0.1)
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg)


def _ctx(model, batch, forward=lambda m, b: m(b)):
    return Context(model, 3, batch, lambda: {}, forward=forward)


def test_keys_and_values_gpt2():
    model = _gpt2().train()
    ids = torch.randint(0, 30, (4, 10), generator=torch.Generator().manual_seed(0))
    m = AttentionFamily(Every(n_steps=1)).run(_ctx(model, ids))
    assert not m.errors
    layers = ("transformer.h.0.attn", "transformer.h.1.attn")
    assert sorted(m.metrics) == sorted(
        [f"geometry/attention/{ly}/{s}" for ly in layers for s in ("max_logit", "entropy", "entropy_min")]
        + [f"geometry/output_logits/{s}" for s in ("mean_abs", "max", "log_z", "log_z_sq")])
    assert model.training                                       # mode restored
    model.eval()
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    logits = out.logits.double().numpy().reshape(-1, 30)
    for i, ly in enumerate(layers):
        w = out.attentions[i].double().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(w > 0, w * np.log(w), 0.0).sum(-1).mean(axis=(0, 2))   # per head
        assert m.metrics[f"geometry/attention/{ly}/entropy"] == pytest.approx(h.mean(), rel=1e-5)
        assert m.metrics[f"geometry/attention/{ly}/entropy_min"] == pytest.approx(h.min(), rel=1e-5)
    lz = logsumexp(logits, axis=1)
    assert m.metrics["geometry/output_logits/log_z"] == pytest.approx(lz.mean(), rel=1e-5)
    assert m.metrics["geometry/output_logits/log_z_sq"] == pytest.approx((lz ** 2).mean(), rel=1e-5)
    assert m.metrics["geometry/output_logits/mean_abs"] == pytest.approx(np.abs(logits).mean(), rel=1e-5)
    assert m.metrics["geometry/output_logits/max"] == pytest.approx(logits.max(), rel=1e-5)


def test_max_logit_against_explicit_qk():
    """The first layer's max logit against q.k/sqrt(d) built by calling c_attn on ln_1 of
    the embeddings, causal positions only, in float64."""
    model = _gpt2().eval()
    ids = torch.randint(0, 30, (3, 8), generator=torch.Generator().manual_seed(1))
    m = AttentionFamily(Every(n_steps=1), output_logits=False).run(_ctx(model, ids))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        blk = model.transformer.h[0]
        x = blk.ln_1(out.hidden_states[0])
        q, k, _ = blk.attn.c_attn(x).split(16, dim=-1)
        q = q.reshape(3, 8, 2, 8).transpose(1, 2).double()
        k = k.reshape(3, 8, 2, 8).transpose(1, 2).double()
    z = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    z = z.masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), -torch.inf)
    assert m.metrics["geometry/attention/transformer.h.0.attn/max_logit"] == pytest.approx(
        float(z.max()), rel=1e-5)
    assert not any(k.startswith("geometry/output_logits") for k in m.metrics)


def test_layer_failure_is_reported_and_others_kept():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.good = nn.MultiheadAttention(8, 2, batch_first=True)
            self.bad = nn.MultiheadAttention(8, 2, batch_first=True, add_zero_attn=True)
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            return self.head(self.bad(*(self.good(x, x, x)[0],) * 3)[0])

    torch.manual_seed(0)
    m = AttentionFamily(Every(n_steps=1)).run(_ctx(Two(), torch.randn(2, 4, 8)))
    assert "geometry/attention/good/max_logit" in m.metrics
    assert not any("/bad/" in k for k in m.metrics)
    assert len(m.errors) == 1 and "layer 'bad'" in str(m.errors[0]) and "add_zero_attn" in str(m.errors[0])
    assert "geometry/output_logits/log_z" in m.metrics


def test_output_without_logits_is_an_error_not_a_crash():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    m = AttentionFamily(Every(n_steps=1)).run(
        _ctx(mha, torch.randn(2, 4, 8), forward=lambda mod, b: mod(b, b, b)[0][..., :1]))
    assert len(m.errors) == 1 and "has no logits" in str(m.errors[0])
    assert "geometry/attention/model/entropy" in m.metrics


def test_output_logits_of():
    t = torch.zeros(2, 3)
    assert output_logits_of(t) is t
    assert output_logits_of({"logits": t}) is t
    assert output_logits_of((t, None)) is t
    with pytest.raises(ValueError, match="has no logits"):
        output_logits_of({"loss": t})
    with pytest.raises(ValueError, match="has no logits"):
        output_logits_of(torch.zeros(2, 1))


def test_off_by_default_and_built_when_asked():
    assert DEFAULTS["attention_every_n_steps"] is None and DEFAULTS["attention_every_n_epochs"] is None
    assert "attention" not in [f.name for f in build_families()]
    fams = build_families(attention_every_n_steps=5, attention_output_logits=False, id_every_n_steps=None,
                          sharpness_every_n_steps=None, topology_every_n_steps=None,
                          np_every_n_steps=None, symmetry_every_n_steps=None)
    assert [f.name for f in fams] == ["attention"]
    assert fams[0].output_logits is False and fams[0].schedule == Every(n_steps=5)


def test_setup_disables_without_attention():
    assert "no supported attention module" in AttentionFamily(Every(n_steps=1)).setup(nn.Linear(2, 2))
    assert AttentionFamily(Every(n_steps=1)).setup(_gpt2()) is None


def _train(monitored: bool):
    model = _gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 30, (64, 10), generator=g)
    logged = []
    mon = None
    if monitored:
        mon = Monitor(model, probe=data, sink=lambda d, step=None: logged.append(d), probe_size=16,
                      families=[AttentionFamily(Every(n_steps=2))], max_overhead=None, verbose=False,
                      forward_fn=lambda m, b: m(b if isinstance(b, torch.Tensor) else b[0]))
    torch.manual_seed(7)                  # dropout draws from the global stream
    for step in range(1, 7):
        ids = data[torch.randint(0, 64, (8,), generator=g)]
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(step)
    if mon is not None:
        mon.close()
    return [p.detach().clone() for p in model.parameters()], logged


def test_training_bitwise_unchanged_and_logged():
    plain, _ = _train(False)
    watched, logged = _train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    keys = {k for d in logged for k in d}
    assert "geometry/attention/transformer.h.1.attn/max_logit" in keys
    assert "geometry/output_logits/log_z_sq" in keys


@pytest.mark.parametrize("kw, match", [
    (dict(output_logits=1), r"output_logits must be True or False, got 1"),
    (dict(chunk=0), r"chunk must be an int >= 1, got 0"),
    (dict(chunk=True), r"chunk must be an int >= 1, got True"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        AttentionFamily(Every(n_steps=1), **kw)


def test_no_forward_raises():
    with pytest.raises(ValueError, match="needs ctx.forward"):
        AttentionFamily(Every(n_steps=1)).run(Context(_gpt2(), 1, None, lambda: {}))


def test_state_dict_round_trip_is_empty():
    fam = AttentionFamily(Every(n_steps=1))
    other = copy.deepcopy(fam)
    other.load_state_dict(fam.state_dict())
    assert fam.state_dict() == other.state_dict() == {}
