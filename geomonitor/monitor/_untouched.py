"""Reading a dataset without leaving a trace on the training run.

The probe set is read from the training data before training starts. For that read to change
nothing about the run, three kinds of state must come out of it as they went in:

* the global RNG streams (torch CPU and CUDA, numpy's legacy ``np.random``, python
  ``random``), which a random ``__getitem__`` (augmentation) or ``__iter__`` (a shuffling
  buffer, a generated stream) draws from: saved and restored by :func:`untouched`. A CUDA
  generator that the read itself initialises is reset to its seeded, unused state, the
  state it would have had when training first used it;
* RNG objects and seekable files that the dataset holds (``torch.Generator``,
  ``np.random.Generator`` / ``RandomState``, ``random.Random``, file objects): found among
  the attributes of the dataset and of datasets it holds (:func:`held_objects`), their state
  or position restored by :func:`untouched`;
* the stream itself: :func:`fresh_iterator` hands out an iterator of the dataset's own, and
  raises ``ValueError`` where reading would consume what training reads -- a one-shot
  stream: the dataset is its own iterator, its ``__iter__`` returns the same iterator every
  time, or it holds an iterator or generator object or a non-seekable stream.

State kept elsewhere (a module-level iterator that ``__iter__`` wraps in a new generator, a
socket, a database cursor) cannot be seen from the dataset and is not covered.

Cost: one pass over the dataset's attributes (containers of more than 64 items are taken for
data and not searched) and an RNG state copy; nothing per sample.

Example::

    held = held_objects(dataset)
    with untouched(held):
        it = fresh_iterator(dataset, held)
        first = list(itertools.islice(it, 64))
        close_iterator(it)
"""
from __future__ import annotations

import contextlib
import io
import random
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterDataPipe

from geomonitor.sharpness.isolation import preserved_rng

__all__ = ["close_iterator", "fresh_iterator", "held_objects", "untouched"]

_HELD_DEPTH = 3  # datasets inside datasets searched for RNGs and iterators
_HELD_ITEMS = 64  # container attributes longer than this are data, not datasets: not searched


def held_objects(dataset: Any) -> list[Any]:
    """Objects held as attributes by ``dataset`` and by the datasets it holds (also inside
    short lists, tuples and dicts, as ``ChainDataset.datasets``), each dataset visited once."""
    out: list[Any] = []
    seen: set[int] = set()
    stack = [(dataset, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        try:
            attrs = list(vars(obj).values())
        except TypeError:  # no __dict__
            continue
        for value in attrs:
            items = [value]
            if isinstance(value, (list, tuple, dict)) and len(value) <= _HELD_ITEMS:
                items = list(value.values() if isinstance(value, dict) else value)
            for item in items:
                out.append(item)
                if isinstance(item, Dataset) and depth + 1 < _HELD_DEPTH:
                    stack.append((item, depth + 1))
    return out


def _restorers(held: list[Any]) -> tuple[list[Callable[[], Any]], str | None]:
    """Callables putting back the state of the RNG objects and the position of the seekable
    files in ``held``, and why a file's position cannot be saved (None if it can)."""
    out: list[Callable[[], Any]] = []
    for obj in held:
        if isinstance(obj, torch.Generator):
            out.append(lambda g=obj, st=obj.get_state(): g.set_state(st))
        elif isinstance(obj, np.random.Generator):
            out.append(lambda g=obj, st=obj.bit_generator.state: setattr(g.bit_generator, "state", st))
        elif isinstance(obj, np.random.RandomState):
            out.append(lambda g=obj, st=obj.get_state(): g.set_state(st))
        elif isinstance(obj, random.Random):
            out.append(lambda g=obj, st=obj.getstate(): g.setstate(st))
        elif isinstance(obj, io.IOBase) and not obj.closed and obj.seekable():
            try:
                pos = obj.tell()
            except (OSError, ValueError):  # e.g. a text file in the middle of a for loop
                return out, f"it holds a {type(obj).__name__} whose position cannot be saved"
            out.append(lambda f=obj, pos=pos: f.seek(pos))
    return out, None


def _one_shot(held: list[Any]) -> str | None:
    """Why ``held`` makes the dataset a one-shot stream, or None."""
    for obj in held:
        if isinstance(obj, io.IOBase):
            if not obj.closed and not obj.seekable():
                return f"it holds a non-seekable {type(obj).__name__} stream"
        elif isinstance(obj, Iterator):
            return f"it holds a {type(obj).__name__} object, an iterator that a read would consume"
    return _restorers(held)[1]


@contextlib.contextmanager
def untouched(held: list[Any]) -> Iterator[None]:
    """On exit, restore the global RNGs (torch CPU, the CUDA devices already initialised,
    numpy, python) and the RNG objects and file positions in ``held``; reset a CUDA
    generator first initialised inside to its seeded, unused state."""
    restore, _ = _restorers(held)
    cuda = torch.cuda.is_available()
    was_initialised = cuda and torch.cuda.is_initialized()
    try:
        with preserved_rng(range(torch.cuda.device_count()) if was_initialised else ()):
            yield
    finally:
        for undo in restore:
            undo()
        if cuda and not was_initialised and torch.cuda.is_initialized():
            for gen in torch.cuda.default_generators:
                gen.manual_seed(gen.initial_seed())


def fresh_iterator(dataset: Any, held: list[Any]) -> Iterator[Any]:
    """A new iterator over the IterableDataset ``dataset`` that shares nothing with the ones
    training will create; close it with :func:`close_iterator`. Nothing is read here.

    Raises:
        ValueError: ``dataset`` is a one-shot stream (the message says why and names
            ``probe_data=``, the way to pass probe data explicitly).
    """
    reason = _one_shot(held)
    it = iter(dataset) if reason is None else None
    # a DataPipe's __iter__ resets it (and invalidates its previous iterator), even where it
    # returns itself: the identity checks do not apply to it
    if it is not None and not isinstance(dataset, IterDataPipe):
        again = iter(dataset)
        if it is dataset:
            reason = "it is its own iterator (its __iter__ returns itself)"
        elif again is it:
            reason = "its __iter__ returns the same iterator every time"
        else:
            close_iterator(it)
            it = again
    if reason is not None:
        raise ValueError(
            f"dataloader.dataset ({type(dataset).__name__}) is a one-shot stream: {reason}, so "
            "drawing a probe set from it would consume samples the training loop reads. Pass "
            "the probe data explicitly: probe_data= (a tensor, a tuple of tensors, or a "
            "DataLoader over data that can be read again), or ProbeSet.from_tensors(...)")
    return it


def close_iterator(it: Any) -> None:
    """Close ``it`` if it is a generator (runs its ``finally`` blocks, e.g. closing files)."""
    if isinstance(it, types.GeneratorType):
        it.close()
