"""Drawing a probe of distinct samples, as many as the loaders allow.

A split's probe is drawn in the order of a seeded permutation of the indices its loader yields
(:func:`~lightning_memwatch.callbacks.machinery.probes.draw_indices`). The first ``probe_size``
of them are read as the model sees them (``input_key``, ``preprocess``) and each is keyed by its
content (a hash of its bytes: equal keys are equal flattened inputs). A sample equal to one read
before is dropped and the next candidates of the permutation are read in its place, until the
probe is full, the candidates run out, or :data:`READ_FACTOR` times ``probe_size`` samples were
read. Without repeats the probe is the first ``probe_size`` of the permutation, read once.

The rolling tables, the latent store and the budget's slices index one probe size for both splits,
so both are cut to the smaller of the two: the monitor's ``effective_probe_size``, recorded when
training starts and in its ``state_dict`` (``probe_size`` stays the requested value). When it is
smaller than requested one rank-zero warning says why (the loader yields fewer samples, or fewer
distinct ones) and how to silence it; fewer than :data:`MIN_SAMPLES` per split is an error. A
validation probe sample equal in content to a training sample read is reported: the model trains
on it, so memorization does not show on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_memwatch.callbacks.machinery.probes import draw_indices
from lightning_memwatch.callbacks.machinery.samplers import Candidates

#: Samples per split a probe needs: the fewest from which a nearest-neighbour distance, a rank
#: test (Kolmogorov-Smirnov, Mann-Whitney) or a spread can be computed (a requested
#: ``probe_size=1`` is honoured).
MIN_SAMPLES = 2
#: At most this many samples per requested probe sample are read looking for distinct ones
#: (1,024 at the default probe of 64), so that a huge dataset of repeats is not read whole.
READ_FACTOR = 16
#: Replacements for repeats are read at least this many at a time.
MIN_CHUNK = 16

WHAT = {"train": "training", "val": "validation"}


def content_keys(x: Tensor) -> list[bytes]:
    """One key per row of ``x`` (``(N, ...)``), equal for rows equal in every element (``-0.0``
    counts as ``0.0``): a 16-byte BLAKE2b digest of the row's bytes.

    Example::

        >>> keys = content_keys(torch.tensor([[1.0, 2.0], [1.0, 2.0], [-0.0, 2.0], [0.0, 2.0]]))
        >>> keys[0] == keys[1], keys[0] == keys[2], keys[2] == keys[3]
        (True, False, True)
    """
    rows = x.detach().reshape(len(x), -1).cpu()
    if rows.is_floating_point() or rows.is_complex():
        rows = rows + 0  # -0.0 + 0 is 0.0
    raw = rows.contiguous().view(torch.uint8).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in raw]


@dataclass
class Drawn:
    """One split's probe as drawn: distinct indices in draw order, and what was read for it."""

    #: candidate indices of samples distinct in content, in the permutation's order
    indices: Tensor
    #: the content keys of ``indices``, in order
    keys: list[bytes]
    #: the content keys of every sample read (repeats and extra reads included)
    seen: set[bytes] = field(default_factory=set)
    #: samples the loader yields (the candidates)
    yielded: int = 0
    #: samples read, and how many of them repeat one read before
    read: int = 0
    repeats: int = 0
    #: the inputs of ``indices`` when one read gave exactly them (else ``None``: gather again)
    inputs: Tensor | None = None

    def cut(self, size: int) -> None:
        """Keep the first ``size`` samples of the probe."""
        if size < len(self.indices):
            self.indices, self.keys, self.inputs = self.indices[:size], self.keys[:size], None


def draw_distinct(
    candidates: Tensor, size: int, seed: int, read: Callable[[Tensor], Tensor]
) -> Drawn:
    """Up to ``size`` candidates whose inputs (``read(indices) -> (b, ...)``) are distinct, in
    the order of the permutation seeded by ``seed`` (module docstring).

    Example::

        >>> data = torch.tensor([[0.0], [1.0], [0.0], [1.0], [2.0]])  # two repeats
        >>> drawn = draw_distinct(torch.arange(5), 4, seed=0, read=lambda i: data[i])
        >>> sorted(data[drawn.indices].flatten().tolist()), drawn.read, drawn.repeats
        ([0.0, 1.0, 2.0], 5, 2)
    """
    order = draw_indices(candidates, len(candidates), seed)
    stop = min(len(order), max(size * READ_FACTOR, size))
    drawn = Drawn(order[:0], [], yielded=len(order))
    kept: list[int] = []
    while len(kept) < size and drawn.read < stop:
        step = size if drawn.read == 0 else max(size - len(kept), MIN_CHUNK)
        chunk = order[drawn.read : min(drawn.read + step, stop)]
        x = read(chunk)
        if drawn.read == 0:
            drawn.inputs = x
        drawn.read += len(chunk)
        for index, key in zip(chunk.tolist(), content_keys(x), strict=True):
            if key in drawn.seen:
                drawn.repeats += 1
            elif len(kept) < size:
                kept.append(index)
                drawn.keys.append(key)
            drawn.seen.add(key)
    drawn.indices = torch.as_tensor(kept, dtype=order.dtype)
    if drawn.repeats or drawn.read != len(kept):
        drawn.inputs = None  # the reads are not exactly the probe
    return drawn


def shortfall(split: str, drawn: Drawn, found: Candidates) -> str:
    """Why ``split``'s probe holds only ``len(drawn.indices)`` samples, for a message."""
    what = WHAT[split]
    count = f"{drawn.yielded} sample{'s' if drawn.yielded != 1 else ''}"
    said = f"the {what} dataloader yields {found.limit or count}"
    if not drawn.repeats:
        return said
    read = "which" if drawn.read == drawn.yielded else f"and the {drawn.read} of them read"
    distinct = f"{len(drawn.indices)} distinct input{'s' if len(drawn.indices) != 1 else ''}"
    why = "; duplicated training data is the best-known cause of memorization"
    return (
        f"{said}, {read} hold only {distinct} (the others repeat them exactly"
        f"{why if split == 'train' else ''})"
    )


def too_few(monitor: str, split: str, drawn: Drawn, found: Candidates, need: int) -> ValueError:
    """The error of a split with fewer than ``need`` distinct samples."""
    return ValueError(
        f"Expected at least {need} distinct {WHAT[split]} samples for {monitor}'s probe but "
        f"{shortfall(split, drawn, found)}: its statistics compare at least {MIN_SAMPLES} "
        "samples per split (a nearest-neighbour distance, a rank test). Give the "
        f"{WHAT[split]} dataloader more distinct samples"
    )


def report_draw(
    monitor: str,
    requests: dict[str, tuple[str, int]],
    drawn: dict[str, Drawn],
    found: dict[str, Candidates],
    tied: tuple[str, ...],
) -> int:
    """Check and report the drawn probes (module docstring); returns the effective probe size
    of the ``tied`` splits after cutting them to one size. ``requests``: per split, the argument
    that sizes its probe and its value."""
    for split, got in drawn.items():
        name, size = requests[split]
        if len(got.indices) < min(MIN_SAMPLES, size):
            raise too_few(monitor, split, got, found[split], min(MIN_SAMPLES, size))
        if got.repeats and len(got.indices) == size:
            rank_zero_info(
                f"{monitor}: {got.repeats} of the {got.read} {WHAT[split]} samples read for the "
                f"probe repeat another exactly; the probe holds {size} distinct ones"
            )
        elif got.repeats and split not in tied:
            rank_zero_warn(
                f"{monitor}: `{name}={size}` but {shortfall(split, got, found[split])}: the "
                f"{WHAT[split]} probe holds {len(got.indices)}. Pass `{name}={len(got.indices)}` "
                "to silence this warning"
            )
    effective = min(len(drawn[split].indices) for split in tied)
    name, size = requests[tied[0]]
    short = [shortfall(s, drawn[s], found[s]) for s in tied if len(drawn[s].indices) < size]
    if short:
        rank_zero_warn(
            f"{monitor}: `{name}={size}` but {'; '.join(short)}: the probe holds {effective} "
            f"samples per split. Pass `{name}={effective}` to silence this warning"
        )
    for split in tied:
        drawn[split].cut(effective)
    return effective


def check_shared_content(monitor: str, train: Drawn, val: Drawn) -> None:
    """Warn when validation probe samples equal, in content, a training sample that was read
    (the training probe and the samples read while drawing it)."""
    shared = sum(key in train.seen for key in val.keys)
    if shared:
        rank_zero_warn(
            f"{monitor}: {shared} of the validation probe's {len(val.keys)} samples equal a "
            f"training sample in content (among the {train.read} training samples read): the "
            "model trains on them, so memorization does not show on them. Remove the "
            "duplicates across the training and validation data"
        )
