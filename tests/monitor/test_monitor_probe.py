"""ProbeSet: seeded draws by index (checked against direct indexing of the data), no global RNG,
collation, IterableDataset fallback, small data, errors, and weights_only state round trips."""
from __future__ import annotations

import collections

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from geomonitor.monitor.probe import ProbeSet, move_to


def _data(n=40):
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 3, generator=g), torch.arange(n)


class _Counting(Dataset):
    def __init__(self, x):
        self.x, self.reads = x, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads.append(i)
        return {"x": self.x[i], "i": i, "name": f"s{i}"}


class _Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield torch.full((2,), float(i)), i


class _NoSampler:
    """A sampler that fails if the probe draw iterates the training order."""

    def __len__(self):
        return 40

    def __iter__(self):
        raise AssertionError("the training sampler was iterated")


def test_draw_by_index_matches_the_data_and_leaves_global_rng_alone():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, sampler=_NoSampler())
    cpu_state = torch.get_rng_state()
    probe = ProbeSet.from_dataloader(loader, 10, seed=3)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    idx = probe.indices
    assert idx.dtype == torch.long and idx.shape == (10,) and len(probe) == 10
    assert len(set(idx.tolist())) == 10 and idx.min() >= 0 and idx.max() < 40
    assert torch.equal(idx, idx.sort().values)
    bx, by = probe.batch
    assert torch.equal(bx, x[idx]) and torch.equal(by, y[idx])  # rows aligned across fields
    again = ProbeSet.from_dataloader(loader, 10, seed=3)
    other = ProbeSet.from_dataloader(loader, 10, seed=4)
    assert torch.equal(again.indices, idx) and not torch.equal(other.indices, idx)


def test_draw_is_uniform_over_seeds():
    x, y = _data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    counts = collections.Counter()
    for seed in range(1500):
        counts.update(ProbeSet.from_dataloader(loader, 3, seed=seed).indices.tolist())
    expected = 1500 * 3 / 10  # each index with probability size/n
    assert all(abs(counts[i] - expected) < 0.15 * expected for i in range(10))


def test_collates_with_the_loaders_collate_fn_and_reads_only_the_probe():
    x, _ = _data(20)
    ds = _Counting(x)
    seen = []

    def collate(samples):
        seen.append(len(samples))
        return {"x": torch.stack([s["x"] for s in samples]), "names": [s["name"] for s in samples]}

    probe = ProbeSet.from_dataloader(DataLoader(ds, batch_size=5, collate_fn=collate), 6, seed=0)
    assert seen == [6] and sorted(ds.reads) == probe.indices.tolist()
    assert torch.equal(probe.batch["x"], x[probe.indices])
    assert probe.batch["names"] == [f"s{i}" for i in probe.indices.tolist()]


def test_default_collate_matches_the_loaders_structure():
    x, _ = _data(20)
    loader = DataLoader(_Counting(x), batch_size=5)
    probe = ProbeSet.from_dataloader(loader, 4, seed=1)
    first = next(iter(loader))
    assert probe.batch.keys() == first.keys() and type(probe.batch["i"]) is type(first["i"])
    assert probe.batch["i"].tolist() == probe.indices.tolist()


def test_unbatched_loader_is_stacked():
    x, y = _data(12)
    probe = ProbeSet.from_dataloader(DataLoader(TensorDataset(x, y), batch_size=None), 5, seed=2)
    assert torch.equal(probe.batch[0], x[probe.indices]) and probe.batch[0].shape == (5, 3)


def test_size_larger_than_dataset_uses_the_whole_dataset():
    x, y = _data(7)
    probe = ProbeSet.from_dataloader(DataLoader(TensorDataset(x, y), batch_size=3), 100, seed=0)
    assert len(probe) == 7 and probe.size == 100
    assert torch.equal(probe.indices, torch.arange(7)) and torch.equal(probe.batch[0], x)


def test_iterable_dataset_takes_the_first_samples_across_batches():
    probe = ProbeSet.from_dataloader(DataLoader(_Stream(20), batch_size=4), 6, seed=0)
    assert probe.indices is None and len(probe) == 6
    assert torch.equal(probe.batch[0][:, 0], torch.arange(6.0))
    assert probe.batch[1].tolist() == list(range(6))
    small = ProbeSet.from_dataloader(DataLoader(_Stream(3), batch_size=2), 10)
    assert len(small) == 3  # whole stream when shorter than size


def test_iterable_dataset_with_dict_and_string_batches():
    class _Dicts(IterableDataset):
        def __iter__(self):
            for i in range(9):
                yield {"x": torch.tensor([float(i)]), "name": f"s{i}"}

    probe = ProbeSet.from_dataloader(DataLoader(_Dicts(), batch_size=4), 5)
    assert probe.batch["x"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert probe.batch["name"] == ["s0", "s1", "s2", "s3", "s4"]


def test_from_tensors():
    x, y = _data(30)
    full = ProbeSet.from_tensors(x)
    assert torch.equal(full.batch, x) and torch.equal(full.indices, torch.arange(30))
    part = ProbeSet.from_tensors(x, y, size=8, seed=5)
    assert isinstance(part.batch, tuple) and len(part) == 8
    assert torch.equal(part.batch[0], x[part.indices]) and torch.equal(part.batch[1], y[part.indices])
    assert torch.equal(ProbeSet.from_tensors(x, size=99).batch, x)


@pytest.mark.parametrize("call, match", [
    (lambda: ProbeSet.from_dataloader(DataLoader(TensorDataset(torch.ones(3, 1))), 0),
     r"size must be a positive int, got 0"),
    (lambda: ProbeSet.from_dataloader(DataLoader(TensorDataset(torch.ones(3, 1))), True),
     r"size must be a positive int, got True"),
    (lambda: ProbeSet.from_dataloader(DataLoader(TensorDataset(torch.ones(3, 1))), 2, seed=-1),
     r"seed must be a non-negative int, got -1"),
    (lambda: ProbeSet.from_dataloader([1, 2, 3], 2), r"dataloader must have a 'dataset' attribute .* got list"),
    (lambda: ProbeSet.from_dataloader(DataLoader(TensorDataset(torch.ones(0, 1))), 2),
     r"dataloader.dataset is empty \(len 0\)"),
    (lambda: ProbeSet.from_dataloader(DataLoader(_Stream(0), batch_size=2), 2),
     r"dataloader yielded no samples"),
    (lambda: ProbeSet.from_tensors(size=2), r"from_tensors needs at least one tensor, got none"),
    (lambda: ProbeSet.from_tensors(torch.ones(3), [1, 2, 3]), r"tensors\[1\] must be a tensor .* got list"),
    (lambda: ProbeSet.from_tensors(torch.tensor(1.0)), r"tensors\[0\] must be a tensor .* of shape \(\)"),
    (lambda: ProbeSet.from_tensors(torch.ones(3), torch.ones(4)), r"share their first dimension, got lengths \[3, 4\]"),
    (lambda: ProbeSet.from_tensors(torch.ones(0, 2)), r"at least one row, got 0"),
    (lambda: ProbeSet.from_tensors(torch.ones(3), size=0), r"size must be a positive int or None, got 0"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_dataset_without_len_and_batches_without_tensors():
    class _NoLen(Dataset):
        def __getitem__(self, i):
            return torch.ones(1)

    class _Loader:
        dataset, collate_fn = _NoLen(), None

    with pytest.raises(ValueError, match=r"dataloader.dataset must have __len__ .* got _NoLen"):
        ProbeSet.from_dataloader(_Loader(), 2)

    class _Words(IterableDataset):
        def __iter__(self):
            yield from ["a", "b"]

    with pytest.raises(ValueError, match=r"cannot find the sample dimension of a batch of type list"):
        ProbeSet.from_dataloader(DataLoader(_Words(), batch_size=2), 2)


def _save_load(state, tmp_path):
    torch.save(state, tmp_path / "probe.pt")
    return torch.load(tmp_path / "probe.pt", weights_only=True)


def test_dataloader_state_round_trip_rebuilds_the_identical_batch(tmp_path):
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    probe = ProbeSet.from_dataloader(loader, 12, seed=7)
    state = _save_load(probe.state_dict(), tmp_path)
    assert state["seed"] == 7 and state["size"] == 12 and torch.equal(state["indices"], probe.indices)
    fresh = ProbeSet.from_dataloader(loader, 5, seed=99)  # different draw until loaded
    fresh.load_state_dict(state)
    assert torch.equal(fresh.indices, probe.indices) and fresh.seed == 7 and fresh.size == 12
    assert all(torch.equal(a, b) for a, b in zip(fresh.batch, probe.batch))
    assert fresh.state_dict().keys() == state.keys()


def test_tensors_state_round_trip_carries_the_tensors(tmp_path):
    x, y = _data(25)
    probe = ProbeSet.from_tensors(x, y, size=6, seed=1)
    state = _save_load(probe.state_dict(), tmp_path)
    other = ProbeSet.from_tensors(torch.zeros(4, 3), torch.zeros(4), size=2)
    other.load_state_dict(state)
    assert torch.equal(other.batch[0], x[probe.indices]) and torch.equal(other.batch[1], y[probe.indices])
    assert torch.equal(other.indices, probe.indices)
    single = ProbeSet.from_tensors(x, size=4, seed=2)
    target = ProbeSet.from_tensors(torch.zeros(2, 3))
    target.load_state_dict(_save_load(single.state_dict(), tmp_path))
    assert torch.equal(target.batch, x[single.indices])


def test_iterable_state_round_trip(tmp_path):
    loader = DataLoader(_Stream(10), batch_size=3)
    probe = ProbeSet.from_dataloader(loader, 4)
    fresh = ProbeSet.from_dataloader(loader, 2)
    fresh.load_state_dict(_save_load(probe.state_dict(), tmp_path))
    assert fresh.indices is None and torch.equal(fresh.batch[0], probe.batch[0]) and len(fresh) == 4


def test_load_state_dict_errors():
    x, y = _data(10)
    probe = ProbeSet.from_dataloader(DataLoader(TensorDataset(x, y)), 3)
    state = probe.state_dict()
    with pytest.raises(ValueError, match=r"state version must be 1, got 2"):
        probe.load_state_dict({**state, "version": 2})
    with pytest.raises(ValueError, match=r"state source must be 'dataloader' for this ProbeSet, got 'tensors'"):
        probe.load_state_dict(ProbeSet.from_tensors(x).state_dict())
    with pytest.raises(ValueError, match=r"state indices must lie in \[0, 10\) .* got range \[2, 11\]"):
        probe.load_state_dict({**state, "indices": torch.tensor([2, 11])})


def test_to_moves_a_copy_and_load_keeps_the_device():
    x, y = _data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    probe = ProbeSet.from_dataloader(loader, 4, seed=0)
    moved = probe.to("meta")
    assert all(t.device.type == "meta" for t in moved.batch)
    assert all(t.device.type == "cpu" for t in probe.batch)  # original unchanged
    moved.load_state_dict(ProbeSet.from_dataloader(loader, 4, seed=1).state_dict())
    assert all(t.device.type == "meta" for t in moved.batch)


def test_move_to_keeps_container_types():
    Pair = collections.namedtuple("Pair", "a b")
    out = move_to({"p": Pair(torch.ones(1), [torch.ones(1), "s"]), "n": 3}, "meta")
    assert isinstance(out["p"], Pair) and out["p"].a.is_meta and out["p"].b[0].is_meta
    assert out["p"].b[1] == "s" and out["n"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda():
    x, y = _data(10)
    probe = ProbeSet.from_tensors(x, y, size=3).to("cuda")
    assert probe.batch[0].is_cuda and torch.equal(probe.batch[0].cpu(), x[probe.indices])
