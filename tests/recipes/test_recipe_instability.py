"""recipes/instability.py run small: children spawned at initialisation are separated by a
barrier, children spawned late are not; every barrier recomputed in numpy from the children's
saved weights with Frankle's definition (peak minus the endpoints' mean)."""
from __future__ import annotations

import importlib.util
import os

import numpy as np

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "instability.py")


def _load():
    spec = importlib.util.spec_from_file_location("recipe_instability", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _np_curve(sa, sb, X, y, n_alpha):
    """Loss and error of the 64-h-h-10 ReLU MLP along (1 - t) sa + t sb, in float64 numpy."""
    Xn, yn = X.double().numpy(), y.numpy()
    losses, errors = [], []
    for t in np.linspace(0, 1, n_alpha):
        p = {k: (1 - t) * sa[k].double().numpy() + t * sb[k].double().numpy() for k in sa}
        h = np.maximum(Xn @ p["0.weight"].T + p["0.bias"], 0)
        h = np.maximum(h @ p["2.weight"].T + p["2.bias"], 0)
        z = h @ p["4.weight"].T + p["4.bias"]
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        losses.append(-logp[np.arange(len(yn)), yn].mean())
        errors.append((z.argmax(1) != yn).mean())
    return np.array(losses), np.array(errors)


def test_barrier_falls_with_k_and_matches_numpy(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "instability.png"
    try:
        res = _load().main(["--hidden", "64", "--total-steps", "300", "--ks", "0", "150",
                            "--n-alpha", "9", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    Xt, yt, Xv, yv = res["data"]
    first, last = res["points"]
    assert (first.k, last.k) == (0, 150)
    recomputed = {}
    for p in (first, last):
        for name, barrier, (X, y) in (("train", p.train, (Xt, yt)), ("heldout", p.heldout, (Xv, yv))):
            L, E = _np_curve(*p.states, X, y, 9)
            assert np.allclose(barrier.losses, L, rtol=1e-4, atol=1e-5)
            b = L.max() - 0.5 * (L[0] + L[-1])
            assert abs(barrier.barrier - b) < 1e-4
            # errors are float32 means: 1e-6 tolerance, one sample is 7e-4
            assert abs(barrier.error_barrier - (E.max() - 0.5 * (E[0] + E[-1]))) < 1e-6
            recomputed[p.k, name] = b
    # the shape: unstable at initialisation, stable after half of training, on both sets
    for name in ("train", "heldout"):
        assert recomputed[0, name] > 0.05
        assert recomputed[0, name] > 10 * recomputed[150, name]
    text = capsys.readouterr().out
    assert "| k | train loss barrier | train error barrier |" in text
    assert os.path.getsize(out) > 1000
