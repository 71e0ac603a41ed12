"""DDP with two CPU processes (gloo): no deadlock, each metric logged once per step, and every
rank measured the same numbers on its own replica (no collectives inside a measurement)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import CSVLogger
    from geomonitor.callbacks import GeometryMonitor

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2 = torch.nn.Linear(5, 8), torch.nn.Linear(8, 1)
        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = (self(x) - y).pow(2).mean()
            self.log("train_loss", loss, sync_dist=True)
            return loss
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Dump(pl.Callback):
        def on_fit_end(self, trainer, pl_module):
            vals = {k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith("geometry/")}
            with open(os.path.join(OUT, f"rank{trainer.global_rank}.json"), "w") as f:
                json.dump(vals, f)

    OUT = sys.argv[1]
    if __name__ == "__main__":
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 5, generator=g)
        data = torch.utils.data.TensorDataset(x, torch.sin(x.sum(1, keepdim=True)))
        mon = GeometryMonitor(max_overhead=None, layers=["fc1", "fc2"], probe_size=32, sharpness_every_n_steps=2,
                              id_every_n_steps=2, topology_every_n_steps=2,
                              topology_every_n_epochs=None, np_every_n_steps=2,
                              np_every_n_epochs=None, strict=True)
        trainer = pl.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=4,
                             logger=CSVLogger(OUT, name="csv", version=0), log_every_n_steps=1,
                             callbacks=[mon, Dump()], enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False,
                             default_root_dir=OUT)
        trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=8))
''')


def test_ddp_two_cpu_processes_log_each_metric_once(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, timeout=240,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in rows[0] if k.startswith("geometry/")]
    assert {"geometry/sharpness", "geometry/eos_ratio", "geometry/id/fc1",
            "geometry/ph/fc2/h1_n_bars", "geometry/neural_persistence/mean"} <= set(keys)
    for key in keys:
        steps = Counter(int(r["step"]) for r in rows if r[key] != "")
        assert steps == Counter({2: 1, 4: 1}), (key, steps)

    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1 and "geometry/sharpness" in r0  # same probe set, same weights, same numbers
