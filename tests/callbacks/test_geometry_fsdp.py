"""Lightning's ``ModelParallelStrategy`` (FSDP2: ``fully_shard`` in ``configure_model``) with two
CPU processes over gloo: every default family measures with no error (``strict=True``), and
its values equal those of an unsharded single-process Lightning fit of the same training
(the two ranks' batches of 16 are the single process's batch of 32): intrinsic dimension and
topology within 1e-3 relative, sharpness within 2%, neural persistence and symmetry within
1e-4. Lightning's ``FSDPStrategy`` (FSDP1) refuses the CPU accelerator, so it is not run here
(the README says so)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import pytorch_lightning as pl
    import torch
    from torch import nn
    from geomonitor.callbacks import GeometryMonitor
    from geomonitor.monitor import Monitor

    Monitor.close_wait_floor = 600.0  # the fit's end waits for the topology child, however loaded the box

    MODE, OUT = sys.argv[1], sys.argv[2]

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        def configure_model(self):
            if MODE == "fsdp2":
                from torch.distributed.fsdp import fully_shard
                mesh = self.device_mesh["data_parallel"]
                for m in (self.fc1, self.fc2, self.fc3):
                    fully_shard(m, mesh=mesh)
                fully_shard(self, mesh=mesh)
        def forward(self, x):
            return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))
        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.02)

    class Share(torch.utils.data.Sampler):
        """Rank r of W takes rows [32 s + r 32/W, 32 s + (r + 1) 32/W) at step s: together the
        ranks' batches are the single process's batch of 32 (read after the group is up)."""
        def __iter__(self):
            dist = torch.distributed
            rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
            per = 32 // world
            return iter([32 * s + rank * per + i for s in range(4) for i in range(per)])
        def __len__(self):
            return 128

    class Dump(pl.Callback):
        def on_fit_end(self, trainer, pl_module):
            vals = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("geometry/")}
            vals["sharded"] = float(all(type(p).__name__ == "DTensor" for p in pl_module.parameters()))
            with open(os.path.join(OUT, f"{MODE}{trainer.global_rank}.json"), "w") as f:
                json.dump(vals, f)

    if __name__ == "__main__":
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(128, 6, generator=g)
        y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
        data = torch.utils.data.TensorDataset(x, y)
        mon = GeometryMonitor(max_overhead=None, layers=["fc1", "fc2", "fc3"], probe_size=32,
                              strict=True, id_every_n_steps=2,
                              sharpness_every_n_steps=2, topology_every_n_steps=2,
                              np_every_n_steps=2, symmetry_every_n_steps=2, sharpness_tol=1e-4,
                              sharpness_max_hvp=40, topology_landmarks=32)
        if MODE == "fsdp2":
            from pytorch_lightning.strategies import ModelParallelStrategy
            kw = dict(strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                      devices=2)
            batch = 16
        else:
            kw, batch = dict(devices=1), 32
        trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, callbacks=[mon, Dump()],
                             enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, default_root_dir=OUT,
                             use_distributed_sampler=False, **kw)
        trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=batch, sampler=Share()))
''')


def _tolerance(key: str) -> tuple[float, float]:
    if key.startswith("geometry/sharpness") or key.startswith("geometry/eos_ratio"):
        return 0.02, 0.0
    if key.startswith("geometry/id/") or key.startswith("geometry/ph/"):
        return 1e-3, 1e-6
    return 1e-4, 1e-6


def test_model_parallel_strategy_equals_the_unsharded_fit(tmp_path):
    script = tmp_path / "fsdp_fit.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), mode, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mode in ("ref", "fsdp2")]
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)  # a guard against a hang only
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-4000:]
    ref = json.loads((tmp_path / "ref0.json").read_text())
    assert ref.pop("sharded") == 0.0
    families = {k.split("/")[1] for k in ref}
    assert {"id", "sharpness", "ph", "neural_persistence", "symmetry", "neural_collapse"} <= families
    for rank in (0, 1):
        got = json.loads((tmp_path / f"fsdp2{rank}.json").read_text())
        assert got.pop("sharded") == 1.0  # the parameters were DTensor shards
        assert set(got) == set(ref)
        for key, want in ref.items():
            if key == "geometry/n_hvp":
                continue
            rel, tol = _tolerance(key)
            assert math.isclose(got[key], want, rel_tol=rel, abs_tol=tol), (rank, key, got[key], want)
