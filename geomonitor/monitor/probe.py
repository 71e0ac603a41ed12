"""The probe set: a fixed set of inputs drawn once, so that curves compare the same inputs.

Geometry measured on a different random batch at every step mixes two sources of variation
(the model changed, the batch changed). A probe set removes the second: ``size`` samples are
drawn *once* and every later measurement uses exactly these samples.

Sources:

* :meth:`ProbeSet.from_dataloader` -- map-style dataset: ``size`` distinct indices drawn
  uniformly without replacement (``torch.randperm`` with a ``torch.Generator`` seeded by
  ``seed``, then sorted for sequential reads), samples read as ``dataloader.dataset[i]`` and
  collated with ``dataloader.collate_fn``, so ``batch`` has the structure the training loop
  sees. ``IterableDataset`` (no indexing): the first ``size`` samples of a *separate*
  iterator ``iter(dataloader.dataset)``, read in this process and collated once (with
  ``batch_size=None``, the first items cut and concatenated along dim 0); ``indices`` is
  ``None``, the seed is unused, and the probe set is as reproducible as the stream.
* :meth:`ProbeSet.from_tensors` -- tensors sharing their first dimension; rows drawn the same
  way (all rows, in order, when ``size`` is ``None``).

What drawing the probe set leaves alone (the training run is the one it would be without it):

=======================================  ================================================
state                                    handling
=======================================  ================================================
the dataloader (its sampler, batch       never iterated; no worker process is started
sampler, workers, ``generator``)
global RNGs: torch CPU, CUDA (devices    saved before the draw, restored after, so a
already initialised), numpy's legacy     dataset drawing from them in ``__getitem__`` /
``np.random``, python ``random``         ``__iter__`` (augmentation, shuffling buffers)
                                         sees the same numbers with or without the draw;
                                         a CUDA generator first initialised by the draw
                                         is reset to its fresh, seeded state
RNG objects held by the dataset (a       state saved and restored (attributes of the
``torch.Generator``, ``np.random.``      dataset and of datasets it holds, e.g.
``Generator`` / ``RandomState``,         ``ChainDataset``)
``random.Random``)
an ``IterableDataset`` that can be       read once more through its own fresh iterator
iterated again (``__iter__`` returns a   (closed afterwards); its samples stay those the
new iterator each time)                  training loop will read
a one-shot stream                        ``ValueError`` before anything is read: the
                                         dataset is its own iterator, ``__iter__``
                                         returns the same iterator twice, or the dataset
                                         (or one it holds) holds an iterator or generator
                                         object -- reading it would consume training
                                         samples. Pass the probe data explicitly instead
                                         (:meth:`from_tensors`, or a DataLoader of
                                         its own)
=======================================  ================================================

Not covered: state a stream keeps elsewhere (a module-level iterator, a socket, a cursor in
a database) cannot be seen from the dataset; such a stream needs explicit probe data too.
Workers' sharding (``get_worker_info``) does not apply to the in-process read, so the probe
set is the start of the unsharded stream. The mechanics: :mod:`geomonitor.monitor._untouched`.

``size`` larger than the data is a documented degradation, not an error: the whole dataset is
used (``len(probe)`` tells how many samples there are). An empty dataset is a ``ValueError``.

State: ``state_dict()`` holds the seed, the size, the indices and -- only for
:meth:`~ProbeSet.from_tensors`, which has no dataset to re-read -- the probe tensors
themselves; it loads with ``torch.load(..., weights_only=True)``. A ProbeSet rebuilt from the
same dataloader and given that state produces the identical batch (for an iterable dataset:
if the stream yields the same first samples again).

Cost: ``size`` dataset reads and one collate, once. Memory: one batch of ``size`` samples.
What the probe set costs later, per measurement, grows with its size: every family that reads
the whole set runs the model forward on all N samples, and the intrinsic dimension's
neighbour search is O(N^2 D) per layer. The size is not bounded (a large probe set on a GPU
can be what a user wants), but above :data:`LARGE_PROBE` samples :func:`size_warning` gives
the monitor a warning with that estimate, issued once at the draw, before the first
measurement runs on the training thread.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> loader = DataLoader(TensorDataset(torch.arange(10.).unsqueeze(1)), batch_size=4)
    >>> probe = ProbeSet.from_dataloader(loader, 3, seed=0)
    >>> probe.batch[0].shape, probe.indices.shape
    (torch.Size([3, 1]), torch.Size([3]))
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate

from geomonitor._checks import positive_int
from geomonitor.monitor._untouched import close_iterator, fresh_iterator, held_objects, untouched

__all__ = ["LARGE_PROBE", "ProbeSet", "move_to", "size_warning"]

#: Probe sets larger than this get a cost warning (:func:`size_warning`): 32 times the
#: default 256 samples, so 1024 times the default's pairwise-distance work.
LARGE_PROBE = 8192
_DEFAULT_SIZE = 256

_STATE_VERSION = 1
_SOURCES = ("dataloader", "iterable", "tensors")


def _check_seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"seed must be a non-negative int, got {value!r}")
    return value


def _draw(n: int, size: int | None, seed: int) -> torch.Tensor:
    """Sorted distinct indices in [0, n): all of them, or ``size`` drawn with a seeded generator."""
    if size is None or size >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:size].sort().values


def size_warning(n: int, readers: list[str]) -> str | None:
    """The cost warning for a probe set of ``n`` samples read whole by the families
    ``readers`` (names), or ``None`` when ``n <= LARGE_PROBE`` or no family reads it whole.

    The estimate: one forward pass of the model over the ``n`` samples per measurement and
    family, and, with the intrinsic dimension (``"id"``), ``n^2`` pairwise distances per
    layer, about ``2 n^2 D`` flops for a layer of width D.
    """
    if n <= LARGE_PROBE or not readers:
        return None
    text = (f"the probe set has {n:,} samples (more than {LARGE_PROBE:,}): every measurement of "
            f"{', '.join(readers)} runs the model forward on all of them on the training thread")
    if "id" in readers:
        text += (f", and the intrinsic dimension computes N^2 = {n * n:.1e} pairwise distances per "
                 f"layer (about 2 N^2 D = {2 * n * n:.1e} x D flops for a layer of width D, "
                 f"{(n / _DEFAULT_SIZE) ** 2:,.0f} times the cost at probe_size={_DEFAULT_SIZE})")
    return (text + "; the first measurement runs before the cost cap has measured anything and "
            f"may take minutes. A probe_size of at most {LARGE_PROBE:,} keeps it short.")


def move_to(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor moved to ``device``; containers rebuilt with their own type."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        items = {k: move_to(v, device) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def _batch_len(batch: Any) -> int | None:
    """Length along dim 0 of the first tensor/array leaf."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return int(batch.shape[0]) if batch.ndim > 0 else None
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, Iterable) and not isinstance(values, (str, bytes)):
        for v in values:
            n = _batch_len(v)
            if n is not None:
                return n
    return None


def _is_per_sample(seq: Any, n: int) -> bool:
    """A list/tuple of plain values (e.g. collated strings), one per sample."""
    return len(seq) == n and not any(isinstance(v, (torch.Tensor, np.ndarray, Mapping, list, tuple))
                                     for v in seq)


def _cut(batch: Any, k: int, n: int) -> Any:
    """The first ``k`` of ``n`` samples of a collated batch."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch[:k]
    if isinstance(batch, Mapping):
        return {key: _cut(v, k, n) for key, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        if _is_per_sample(batch, n):
            return list(batch[:k])
        parts = [_cut(v, k, n) for v in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else type(batch)(parts)
    return batch


def _concat(batches: list[Any], lengths: list[int]) -> Any:
    first = batches[0]
    if len(batches) == 1:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, np.ndarray):
        return np.concatenate(batches)
    if isinstance(first, Mapping):
        return {k: _concat([b[k] for b in batches], lengths) for k in first}
    if isinstance(first, (list, tuple)):
        if all(_is_per_sample(b, n) for b, n in zip(batches, lengths)):
            return [v for b in batches for v in b]
        parts = [_concat([b[i] for b in batches], lengths) for i in range(len(first))]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)
    return first


def _checked(batch: Any, n: int) -> Any:
    """``batch`` (of ``n`` samples); ValueError for no samples or no sample dimension."""
    if n == 0:
        raise ValueError("dataloader.dataset (an IterableDataset) yielded no samples: nothing "
                         "to draw a probe set from")
    if _batch_len(batch) is None:
        raise ValueError("cannot find the sample dimension of a batch of type "
                         f"{type(batch).__name__} from the IterableDataset's dataloader")
    return batch


class ProbeSet:
    """A fixed set of inputs drawn once (seeded), so curves compare the same inputs over time.

    Build it with :meth:`from_dataloader` or :meth:`from_tensors`, not with the constructor.

    Attributes:
        batch: the collated batch, same structure the dataloader yields (a tensor, or a tuple
            of tensors for :meth:`from_tensors` with several tensors).
        indices: (n,) int64 dataset indices, sorted; ``None`` for an ``IterableDataset``.
        seed: the seed of the draw.
        size: the requested size (``len(probe)`` is the actual one, smaller for small data).
    """

    def __init__(self, batch: Any, indices: torch.Tensor | None, *, seed: int, size: int | None,
                 source: str, dataloader: Any = None, tensors: tuple[torch.Tensor, ...] = ()) -> None:
        self.batch = batch
        self.indices = indices
        self.seed = seed
        self.size = size
        self._source = source
        self._dataloader = dataloader
        self._tensors = tensors
        self._device: torch.device | None = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dataloader(cls, dataloader: Any, size: int, *, seed: int = 0) -> ProbeSet:
        """Draw ``size`` samples from ``dataloader.dataset`` and collate them, leaving the
        training run untouched (see the module docstring for what exactly holds).

        Args:
            dataloader: a ``torch.utils.data.DataLoader`` (anything with ``dataset`` and
                ``collate_fn``).
            size: number of samples; the whole dataset when it has fewer.
            seed: seed of the ``torch.Generator`` drawing the indices (map-style datasets).

        Raises:
            ValueError: bad ``size``/``seed``, no ``dataset`` attribute, an empty dataset, a
                map-style dataset without ``__len__``, or an ``IterableDataset`` that is a
                one-shot stream (the message says why and what to pass instead).
        """
        size = positive_int("size", size)
        seed = _check_seed(seed)
        dataset = getattr(dataloader, "dataset", None)
        if dataset is None:
            raise ValueError(f"dataloader must have a 'dataset' attribute (a DataLoader), got "
                             f"{type(dataloader).__name__}")
        if isinstance(dataset, IterableDataset):
            batch = cls._take_first(dataloader, size)
            return cls(batch, None, seed=seed, size=size, source="iterable", dataloader=dataloader)
        indices = _draw(cls._dataset_len(dataset), size, seed)
        batch = cls._collate(dataloader, indices)
        return cls(batch, indices, seed=seed, size=size, source="dataloader", dataloader=dataloader)

    @classmethod
    def from_tensors(cls, *tensors: torch.Tensor, size: int | None = None, seed: int = 0) -> ProbeSet:
        """Rows of tensors sharing dim 0: all of them (``size=None``) or ``size`` drawn by seed.

        ``batch`` is the single tensor, or a tuple for several tensors.

        Raises:
            ValueError: no tensors, a non-tensor, a 0-d tensor, different first dimensions,
                zero rows, bad ``size``/``seed``.
        """
        size = positive_int("size", size, allow_none=True)
        seed = _check_seed(seed)
        if not tensors:
            raise ValueError("from_tensors needs at least one tensor, got none")
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor) or t.ndim == 0:
                raise ValueError(f"tensors[{i}] must be a tensor with a sample dimension, got "
                                 f"{type(t).__name__}{'' if not isinstance(t, torch.Tensor) else ' of shape ()'}")
        lengths = [int(t.shape[0]) for t in tensors]
        if len(set(lengths)) != 1:
            raise ValueError(f"tensors must share their first dimension, got lengths {lengths}")
        if lengths[0] == 0:
            raise ValueError("tensors must have at least one row, got 0")
        indices = _draw(lengths[0], size, seed)
        picked = tuple(t[indices.to(t.device)] for t in tensors)
        batch = picked[0] if len(picked) == 1 else picked
        return cls(batch, indices, seed=seed, size=size, source="tensors", tensors=picked)

    @staticmethod
    def _dataset_len(dataset: Any) -> int:
        try:
            n = len(dataset)
        except TypeError:
            raise ValueError(f"dataloader.dataset must have __len__ to be indexed, got "
                             f"{type(dataset).__name__} without it") from None
        if n == 0:
            raise ValueError("dataloader.dataset is empty (len 0): nothing to draw a probe set from")
        return n

    @staticmethod
    def _collate(dataloader: Any, indices: torch.Tensor) -> Any:
        # batch_size=None disables automatic batching: collate_fn then converts single samples
        auto = getattr(dataloader, "batch_sampler", True) is not None
        collate = getattr(dataloader, "collate_fn", None) if auto else None
        with untouched(held_objects(dataloader.dataset)):  # random __getitem__ (augmentation)
            samples = [dataloader.dataset[int(i)] for i in indices]
            return (collate or default_collate)(samples)

    @staticmethod
    def _take_first(dataloader: Any, size: int) -> Any:
        """The first ``size`` samples of a fresh iterator over the IterableDataset, read here
        with every RNG restored afterwards; ``ValueError`` for a one-shot stream."""
        dataset = dataloader.dataset
        held = held_objects(dataset)
        auto = getattr(dataloader, "batch_sampler", True) is not None  # as in _collate
        collate = getattr(dataloader, "collate_fn", None) or (default_collate if auto else None)
        with untouched(held):
            items = fresh_iterator(dataset, held)
            try:
                if auto:
                    samples = list(itertools.islice(items, size))
                    return _checked(collate(samples) if samples else None, len(samples))
                return ProbeSet._concat_first(items, size, collate)
            finally:
                close_iterator(items)

    @staticmethod
    def _concat_first(items: Iterator[Any], size: int, convert: Any) -> Any:
        """Without automatic batching every item is a batch: cut and concatenate to ``size``."""
        batches, lengths, total = [], [], 0
        for item in items:
            batch = _checked(convert(item) if convert is not None else item, 1)
            n = _batch_len(batch)
            take = min(n, size - total)
            batches.append(_cut(batch, take, n) if take < n else batch)
            lengths.append(take)
            total += take
            if total >= size:
                break
        return _checked(_concat(batches, lengths) if total else None, total)

    # -- use --------------------------------------------------------------------------------
    def __len__(self) -> int:
        n = _batch_len(self.batch)
        return int(n) if n is not None else 0

    def to(self, device: torch.device | str) -> ProbeSet:
        """A ProbeSet whose batch lives on ``device`` (this one is unchanged)."""
        out = ProbeSet(move_to(self.batch, device), self.indices, seed=self.seed, size=self.size,
                       source=self._source, dataloader=self._dataloader, tensors=self._tensors)
        out._device = torch.device(device)
        return out

    def state_dict(self) -> dict[str, Any]:
        """``version``, ``source``, ``seed``, ``size``, ``indices`` (+ ``tensors`` for from_tensors).

        Plain types and CPU tensors only: loadable with ``torch.load(..., weights_only=True)``.
        """
        state: dict[str, Any] = {"version": _STATE_VERSION, "source": self._source,
                                 "seed": self.seed, "size": self.size,
                                 "indices": None if self.indices is None else self.indices.clone()}
        if self._source == "tensors":
            state["tensors"] = [t.detach().cpu().clone() for t in self._tensors]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the probe set of ``state``: re-read the saved indices from this ProbeSet's
        dataloader (or take the saved tensors), so the batch is the one that was saved.

        Raises:
            ValueError: unknown version, a source other than this ProbeSet's, or indices out of
                range for this dataset.
        """
        version = state.get("version")
        if version != _STATE_VERSION:
            raise ValueError(f"state version must be {_STATE_VERSION}, got {version!r}")
        source = state.get("source")
        if source != self._source:
            raise ValueError(f"state source must be {self._source!r} for this ProbeSet, got {source!r}")
        seed, size, indices = state["seed"], state["size"], state["indices"]
        if source == "dataloader":
            n = self._dataset_len(self._dataloader.dataset)
            indices = torch.as_tensor(indices, dtype=torch.long).cpu()
            if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
                raise ValueError(f"state indices must lie in [0, {n}) for this dataset, got range "
                                 f"[{int(indices.min())}, {int(indices.max())}]")
            batch = self._collate(self._dataloader, indices)
        elif source == "iterable":
            batch = self._take_first(self._dataloader, size)
        else:
            tensors = tuple(state["tensors"])
            self._tensors = tensors
            batch = tensors[0] if len(tensors) == 1 else tensors
            indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        self.batch = batch if self._device is None else move_to(batch, self._device)
        self.indices, self.seed, self.size = indices, seed, size
