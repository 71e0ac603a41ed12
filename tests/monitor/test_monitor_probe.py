"""ProbeSet: seeded draws by index (checked against direct indexing of the data), no global RNG,
collation, IterableDataset fallback, small data, errors, and weights_only state round trips;
the training loop's RNG states and samples are the same with and without the draw, and
one-shot streams are a clear error with nothing consumed."""
from __future__ import annotations

import collections
import io
import itertools
import os
import random
import subprocess
import sys

import numpy as np
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
     r"dataloader.dataset \(an IterableDataset\) yielded no samples"),
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


# -- the training run is the one it would be without the draw ------------------------------------
class _GlobalRandomStream(IterableDataset):
    """Samples drawn from every global RNG: torch, numpy's legacy np.random, python random."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for _ in range(self.n):
            yield torch.randn(3) + float(np.random.rand()) + random.random()


class _GlobalRandomItems(Dataset):
    """A map-style dataset with a random augmentation from the global RNGs in __getitem__."""

    def __len__(self):
        return 30

    def __getitem__(self, i):
        return torch.full((2,), float(i)) + torch.rand(2) + float(np.random.rand()) + random.random()


class _OwnRandomStream(IterableDataset):
    """A stream drawing from generators it holds, one of them inside a dataset it holds."""

    def __init__(self, n, inner=True):
        self.n, self.g, self.rs = n, torch.Generator().manual_seed(1), np.random.default_rng(2)
        self.py = random.Random(3)
        self.inner = _OwnRandomStream(n, inner=False) if inner else None

    def __iter__(self):
        inner = iter(self.inner) if self.inner is not None else itertools.repeat(0.0)
        for _, extra in zip(range(self.n), inner):
            yield torch.rand(2, generator=self.g) + float(self.rs.random()) + self.py.random() + extra


def _seed_all(seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _rng_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _training_view(loader, draw):
    """Seed, draw the probe set (or not), then read the epoch as a training loop would."""
    _seed_all()
    probe = ProbeSet.from_dataloader(loader, 10, seed=0) if draw else None
    states = _rng_states()
    seen = torch.cat(list(loader))
    return probe, states, seen, _rng_states()


@pytest.mark.parametrize("make", [lambda: DataLoader(_GlobalRandomStream(40), batch_size=8),
                                  lambda: DataLoader(_GlobalRandomItems(), batch_size=8, shuffle=True),
                                  lambda: DataLoader(_OwnRandomStream(40), batch_size=8)])
def test_the_training_loop_sees_the_same_rng_and_samples_with_and_without_the_draw(make):
    probe, states, seen, after = _training_view(make(), draw=True)
    _, states0, seen0, after0 = _training_view(make(), draw=False)
    for a, b in zip(states + after, states0 + after0):
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b) if
                isinstance(a, np.ndarray) else a == b)
    assert torch.equal(seen, seen0) and len(probe) == 10


def test_the_stream_probe_is_the_streams_first_samples():
    _seed_all()
    probe = ProbeSet.from_dataloader(DataLoader(_GlobalRandomStream(40), batch_size=4), 10)
    _seed_all()  # reference: the stream read directly from the same RNG state
    assert torch.equal(probe.batch, torch.stack(list(itertools.islice(iter(_GlobalRandomStream(40)), 10))))


def test_the_dataloader_itself_is_never_iterated():
    class _Untouchable(DataLoader):
        def __iter__(self):
            raise AssertionError("the dataloader was iterated")

    probe = ProbeSet.from_dataloader(_Untouchable(_Stream(20), batch_size=4, num_workers=2), 5)
    assert probe.batch[1].tolist() == [0, 1, 2, 3, 4]


def test_unbatched_iterable_items_are_cut_and_concatenated():
    class _Batches(IterableDataset):
        def __iter__(self):
            for i in range(4):
                yield torch.arange(3 * i, 3 * i + 3)

    probe = ProbeSet.from_dataloader(DataLoader(_Batches(), batch_size=None), 7)
    assert probe.batch.tolist() == list(range(7))


class _SameIterator(IterableDataset):
    """__iter__ returns one iterator, created once."""

    def __init__(self, n):
        self.source = iter([torch.full((2,), float(i)) for i in range(n)])

    def __iter__(self):
        return self.source


class _HoldsGenerator(IterableDataset):
    """__iter__ makes a new generator each time, but over one generator created once."""

    def __init__(self, n):
        self.source = (torch.full((2,), float(i)) for i in range(n))

    def __iter__(self):
        yield from self.source


class _OwnIterator(IterableDataset):
    """The dataset is its own iterator."""

    def __init__(self, n):
        self.i, self.n = 0, n

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        return torch.full((2,), float(self.i - 1))


@pytest.mark.parametrize("cls, why", [
    (_SameIterator, r"it holds a list_iterator object, an iterator that a read would consume"),
    (_HoldsGenerator, r"it holds a generator object, an iterator that a read would consume"),
    (_OwnIterator, r"it is its own iterator \(its __iter__ returns itself\)"),
])
def test_a_one_shot_stream_is_a_clear_error_and_nothing_is_consumed(cls, why):
    ds = cls(20)
    with pytest.raises(ValueError, match=rf"dataloader.dataset \({cls.__name__}\) is a one-shot stream: {why}, "
                       r"so drawing a probe set from it would consume samples the training loop reads\. "
                       r"Pass the probe data explicitly: probe_data="):
        ProbeSet.from_dataloader(DataLoader(ds, batch_size=4), 8)
    assert [float(b[0, 0]) for b in DataLoader(ds, batch_size=4)] == [0.0, 4.0, 8.0, 12.0, 16.0]


def test_same_iterator_returned_twice_is_a_one_shot_stream():
    shared = iter(range(10))

    class _Global(IterableDataset):  # holds nothing: the iterator lives outside the dataset
        def __iter__(self):
            return shared

    with pytest.raises(ValueError, match=r"_Global\) is a one-shot stream: its __iter__ returns the same iterator every time"):
        ProbeSet.from_dataloader(DataLoader(_Global(), batch_size=2), 3)
    assert next(shared) == 0


def test_a_held_file_is_read_from_where_it_was():
    class _Lines(IterableDataset):
        def __init__(self):
            self.f = io.StringIO("".join(f"{i}\n" for i in range(12)))

        def __iter__(self):
            for line in self.f:  # no seek: a second pass would see nothing
                yield torch.tensor([float(line)])

    ds = _Lines()
    probe = ProbeSet.from_dataloader(DataLoader(ds, batch_size=4), 5)
    assert probe.batch.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert torch.cat(list(DataLoader(ds, batch_size=4))).flatten().tolist() == [float(i) for i in range(12)]
    r, w = os.pipe()
    with os.fdopen(r, "rb") as pipe:
        ds.f = pipe  # a pipe cannot seek back
        with pytest.raises(ValueError, match=r"one-shot stream: it holds a non-seekable BufferedReader stream"):
            ProbeSet.from_dataloader(DataLoader(ds, batch_size=4), 5)
    os.close(w)


_CUDA_SCRIPT = r"""
import sys, torch
from torch.utils.data import DataLoader, IterableDataset
from geomonitor.monitor.probe import ProbeSet

class S(IterableDataset):
    def __iter__(self):
        for _ in range(8):
            yield torch.randn(2, device="cuda").cpu()

torch.manual_seed(0)
assert not torch.cuda.is_initialized()
if sys.argv[1] == "draw":
    ProbeSet.from_dataloader(DataLoader(S(), batch_size=2), 4)
    assert torch.cuda.is_initialized()
print(torch.randn(3, device="cuda").tolist(), torch.randn(3).tolist())
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_first_initialised_by_the_draw_is_left_fresh():
    def run(arg):
        out = subprocess.run([sys.executable, "-c", _CUDA_SCRIPT, arg], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert run("draw") == run("none")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_of_an_initialised_device_is_restored():
    class _CudaStream(IterableDataset):
        def __iter__(self):
            for _ in range(8):
                yield torch.randn(2, device="cuda").cpu()

    torch.cuda.init()
    before = torch.cuda.get_rng_state()
    ProbeSet.from_dataloader(DataLoader(_CudaStream(), batch_size=2), 4)
    assert torch.equal(torch.cuda.get_rng_state(), before)


def test_datapipes_are_read_again_unless_they_wrap_a_generator():
    from torch.utils.data.datapipes.iter import IterableWrapper

    pipe = IterableWrapper(range(20)).map(lambda x: torch.tensor([float(x)]))
    loader = DataLoader(pipe, batch_size=4)
    assert ProbeSet.from_dataloader(loader, 5).batch.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert torch.cat(list(loader)).flatten().tolist() == [float(i) for i in range(20)]
    once = IterableWrapper(torch.tensor([float(i)]) for i in range(20))
    with pytest.raises(ValueError, match=r"one-shot stream: it holds a generator object"):
        ProbeSet.from_dataloader(DataLoader(once, batch_size=4), 5)
