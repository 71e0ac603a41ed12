"""GeometryMonitor and the focused monitors: argument checks, state key, LightningCLI config."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch


from geomonitor.callbacks import (GeometryMonitor, IntrinsicDimensionMonitor,
                                  NeuralPersistenceMonitor, SharpnessMonitor, TopologyMonitor)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=""), r"layers must be 'auto', a module-name glob or a non-empty list of globs, got ''"),
    (dict(layers=[]), r"layers must be .* got \[\]"),
    (dict(reduce="max"), r"reduce must be one of \('auto', 'flatten', 'mean', 'last'\), got 'max'"),
    (dict(probe_size=0), r"probe_size must be a positive int, got 0"),
    (dict(probe_size=2.5), r"probe_size must be a positive int, got 2.5"),
    (dict(probe_seed=-1), r"probe_seed must be a non-negative int, got -1"),
    (dict(probe_data="digits"), r"probe_data must be None .* got str"),
    (dict(id_method="knn"), r"id_method must be one of \('twonn', 'mle', 'pca'\), got 'knn'"),
    (dict(id_every_n_steps=0), r"id_every_n_steps must be a positive int or None, got 0"),
    (dict(sharpness_every_n_epochs=-2), r"sharpness_every_n_epochs must be a positive int or None, got -2"),
    (dict(sharpness_max_hvp=0), r"sharpness_max_hvp must be a positive int, got 0"),
    (dict(sharpness_tol=0.0), r"sharpness_tol must be a positive float, got 0.0"),
    (dict(topology_landmarks=2), r"topology_landmarks must be >= 3 or None, got 2"),
    (dict(np_every_n_steps=True), r"np_every_n_steps must be a positive int or None, got True"),
    (dict(spectrum_every_n_epochs=0), r"spectrum_every_n_epochs must be a positive int or None, got 0"),
    (dict(log_diagrams=1), r"log_diagrams must be True or False, got 1"),
    (dict(strict="yes"), r"strict must be True or False, got 'yes'"),
    (dict(max_pending=0), r"max_pending must be a positive int, got 0"),
    (dict(prog_bar=["loss"]), r"prog_bar entries must name a geometry metric .* got 'loss'"),
    (dict(prog_bar=3), r"prog_bar must be a metric name, a list of them or None, got 3"),
    (dict(id_every_n_steps=None, sharpness_every_n_steps=None, topology_every_n_steps=None, topology_every_n_epochs=None,
          np_every_n_steps=None, np_every_n_epochs=None, symmetry_every_n_steps=None), r"needs at least one family on"),
])
def test_geometry_monitor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometryMonitor(**kwargs)


@pytest.mark.parametrize("cls, kwargs, match", [
    (IntrinsicDimensionMonitor, dict(method="ml"), r"method must be one of \('twonn', 'mle', 'pca'\), got 'ml'"),
    (IntrinsicDimensionMonitor, dict(every_n_steps=None), r"every_n_steps and every_n_epochs are both None"),
    (IntrinsicDimensionMonitor, dict(log_profile=None), r"log_profile must be True or False, got None"),
    (SharpnessMonitor, dict(max_hvp=-1), r"max_hvp must be a positive int, got -1"),
    (SharpnessMonitor, dict(tol=-1e-3), r"tol must be a positive float, got -0.001"),
    (SharpnessMonitor, dict(every_n_epochs=0), r"every_n_epochs must be a positive int or None, got 0"),
    (TopologyMonitor, dict(maxdim=2), r"maxdim must be 0 or 1, got 2"),
    (TopologyMonitor, dict(n_landmarks=0), r"n_landmarks must be a positive int or None, got 0"),
    (TopologyMonitor, dict(reduce="sum"), r"reduce must be one of"),
    (NeuralPersistenceMonitor, dict(every_n_epochs=None), r"both None"),
    (NeuralPersistenceMonitor, dict(max_pending=-3), r"max_pending must be a positive int, got -3"),
])
def test_focused_monitors_reject_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_state_key_is_the_class_name_whatever_runs():
    # changed layers, options or families must not orphan the checkpointed state (the monitor
    # warns about what differs instead, and each family resumes from its own entry)
    a, b = GeometryMonitor(layers=["fc1"]), GeometryMonitor(layers=["fc2"], probe_size=32)
    assert a.state_key == b.state_key == "GeometryMonitor"
    assert a.state_key == GeometryMonitor(layers=["fc1"], sharpness_max_hvp=7).state_key
    assert a.state_key == GeometryMonitor(topology_every_n_steps=None, topology_every_n_epochs=None).state_key
    assert SharpnessMonitor().state_key != IntrinsicDimensionMonitor().state_key


class _CliModel(pl.LightningModule):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(2, hidden)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_cli_builds_the_monitor_from_yaml(tmp_path):
    from pytorch_lightning.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  logger: false\n"
        f"  default_root_dir: {tmp_path}\n"
        "  callbacks:\n"
        "    - class_path: geomonitor.callbacks.GeometryMonitor\n"
        "      init_args:\n"
        "        layers: [fc1]\n"
        "        reduce: mean\n"
        "        probe_size: 64\n"
        "        sharpness_every_n_steps: 7\n"
        "        topology_every_n_steps: null\n"
        "        prog_bar: [eos_ratio, sharpness]\n"
        "    - class_path: geomonitor.callbacks.SharpnessMonitor\n"
        "      init_args: {every_n_steps: 3, max_hvp: 5}\n")
    cli = LightningCLI(_CliModel, run=False, args=["--config", str(config)],
                       save_config_callback=None,
                       seed_everything_default=False)
    (mon,) = [c for c in cli.trainer.callbacks if isinstance(c, GeometryMonitor)]
    (sharp,) = [c for c in cli.trainer.callbacks if isinstance(c, SharpnessMonitor)]
    assert mon.reduce == "mean" and mon.probe_size == 64
    assert mon.prog_bar == ["eos_ratio", "sharpness"]
    assert [f.name for f in mon.families] == ["id", "sharpness", "neural_persistence", "symmetry"]
    (fam,) = [f for f in mon.families if f.name == "sharpness"]
    assert fam.schedule.due_step(7) and not fam.schedule.due_step(8)
    assert sharp.families[0].schedule.due_step(3)


def test_lightning_cli_reports_a_bad_value():
    from pytorch_lightning.cli import LightningCLI

    with pytest.raises((SystemExit, ValueError)):
        LightningCLI(_CliModel, run=False, save_config_callback=None,
                     seed_everything_default=False, args=[
            "--trainer.logger=false",
            "--trainer.callbacks+=geomonitor.callbacks.GeometryMonitor",
            "--trainer.callbacks.reduce=median"])
