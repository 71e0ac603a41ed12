"""DDP with two CPU processes (gloo): a measurement that fails on rank 1 only. Both ranks must
end with the same geometry in ``trainer.callback_metrics`` (rank 0's values), and rank 1's
failures must reach the logger (read back from the CSV file) in ``geometry/errors``."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import CSVLogger
    from geomonitor.callbacks import GeometryMonitor
    from geomonitor.monitor.engine import default_forward

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2 = torch.nn.Linear(5, 8), torch.nn.Linear(8, 1)
        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))
        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self(x) - y).pow(2).mean()
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def forward_failing_on_rank_1(model, batch):
        if torch.distributed.get_rank() == 1:
            raise RuntimeError("the activation forward fails on rank 1")
        return default_forward(model, batch)

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
        mon = GeometryMonitor(max_overhead=None, layers=["fc1"], probe_size=32,
                              sharpness_every_n_steps=2, sharpness_max_hvp=4, id_every_n_steps=2,
                              topology_every_n_steps=None, topology_every_n_epochs=None,
                              np_every_n_steps=2, np_every_n_epochs=None,
                              symmetry_every_n_steps=None, forward_fn=forward_failing_on_rank_1)
        trainer = pl.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=4,
                             logger=CSVLogger(OUT, name="csv", version=0), log_every_n_steps=1,
                             callbacks=[Dump(), mon], enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False,
                             default_root_dir=OUT)
        trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=8))
        if torch.distributed.is_initialized():  # not left to interpreter shutdown
            torch.distributed.destroy_process_group()
''')


def test_a_failure_on_one_rank_keeps_the_ranks_metrics_identical(tmp_path):
    script = tmp_path / "ddp_fail.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, timeout=240,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1
    assert {"geometry/id/fc1", "geometry/sharpness", "geometry/neural_persistence/mean"} <= set(r0)
    # the ID failed on rank 1 at steps 2 and 4: counted on every rank, logged by rank 0
    assert r0["geometry/errors"] == 2.0
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [(int(r["step"]), float(r["geometry/errors"])) for r in rows
              if r.get("geometry/errors", "") != ""]
    assert logged == [(2, 1.0), (4, 2.0)]
