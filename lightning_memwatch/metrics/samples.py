"""Samples family: Meehan et al.'s data-copying statistic ``C_T`` and the copy fraction."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_memwatch.functional.checks import check_int
from lightning_memwatch.functional.data_copying import data_copying_from_distances

SAMPLES = ("heldout", "generated")
_FIELDS = ("distances", "cells", "copied")


class DataCopying(Metric):
    """Per-sample results of the held-out and the generated samples, and ``C_T`` from them.

    ``update(distances, cells, copied, sample)`` takes, for a batch of ``sample``
    (``"heldout"`` or ``"generated"``) samples: the distance to the nearest training sample
    (of the sample's cell), the cell, and whether the sample is
    :func:`~lightning_memwatch.functional.data_copying.copied`, all ``(B,)``. Every field is a
    ``cat`` state, so under DDP torchmetrics gathers the samples of every rank and
    :meth:`compute` equals the single-process value (``C_T`` depends on the pooled samples only).

    ``compute()`` gives:

    - ``ct``: Meehan et al.'s ``C_T``
      (:func:`~lightning_memwatch.functional.data_copying.data_copying_from_distances`);
      ``<< 0`` data copying, ``>> 0`` underfitting, near 0 neither;
    - ``copy_fraction``: the share of generated samples that are copied (1 - Alaa et al.
      2022's authenticity), and ``heldout_copy_fraction``, the same share for the held-out
      samples, its value for a generator that samples the data distribution;
    - ``nonfinite``: samples with a NaN distance (non-finite outputs), left out of the rest.

    Args:
        cells: the number of cells of the partition the ``cells`` ids index.
        tau: a cell counts in ``C_T`` when it holds more than this share of the generated
            samples; ``None``: more than 20 samples (``tau = 20 / m``).
        tie_correction: the tie-corrected Mann-Whitney variance in ``C_T``; ``False`` (default):
            Meehan et al.'s untied variance
            (:func:`~lightning_memwatch.functional.stats.mann_whitney_z`).

    Example::

        >>> import torch
        >>> metric = DataCopying(cells=1, tau=0.0)
        >>> metric.update(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, dtype=torch.long),
        ...               torch.tensor([False, False, True]), "heldout")
        >>> metric.update(torch.tensor([0.1, 0.2, float("nan")]), torch.zeros(3, dtype=torch.long),
        ...               torch.tensor([True, True, False]), "generated")
        >>> out = metric.compute()
        >>> bool(out["ct"] < 0), out["copy_fraction"].item(), out["nonfinite"].item()
        (True, 1.0, 1)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        cells: int,
        *,
        tau: float | None = None,
        tie_correction: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.cells = check_int("cells", cells)
        if tau is not None and (isinstance(tau, bool) or not 0 <= tau <= 1):
            raise ValueError(f"Expected `tau` to be None or a share in [0, 1] but got {tau!r}")
        if not isinstance(tie_correction, bool):
            raise ValueError(
                f"Expected `tie_correction` to be True or False but got {tie_correction!r}"
            )
        self.tau, self.tie_correction = tau, tie_correction
        for sample in SAMPLES:
            for field in _FIELDS:
                self.add_state(f"{sample}_{field}", default=[], dist_reduce_fx="cat")

    def update(self, distances: Tensor, cells: Tensor, copied: Tensor, sample: str) -> None:
        """Record a batch of ``sample`` (``"heldout"`` or ``"generated"``) results, ``(B,)``
        each."""
        if sample not in SAMPLES:
            raise ValueError(f"Expected `sample` to be one of {SAMPLES} but got {sample!r}")
        shapes = {tuple(t.shape) for t in (distances, cells, copied)}
        if len(shapes) != 1 or distances.ndim != 1:
            raise ValueError(
                "Expected (B,) `distances`, `cells` and `copied` of one length but got "
                f"{[tuple(t.shape) for t in (distances, cells, copied)]}"
            )
        values = (distances.to(torch.float64), cells.to(torch.long), copied.to(torch.float64))
        for field, value in zip(_FIELDS, values, strict=True):
            getattr(self, f"{sample}_{field}").append(value.detach())

    def samples(self, sample: str, field: str) -> Tensor:
        """Every recorded value of ``field`` (``distances``, ``cells``, ``copied``)."""
        state = getattr(self, f"{sample}_{field}")
        if isinstance(state, list) and not state:
            dtype = torch.long if field == "cells" else torch.float64
            return torch.empty(0, dtype=dtype, device=self.device)
        return dim_zero_cat(state)

    def compute(self) -> dict[str, Tensor]:
        got = {(s, f): self.samples(s, f) for s in SAMPLES for f in _FIELDS}
        out = {
            "ct": data_copying_from_distances(
                got["heldout", "distances"],
                got["heldout", "cells"],
                got["generated", "distances"],
                got["generated", "cells"],
                cells=self.cells,
                tau=self.tau,
                tie_correction=self.tie_correction,
            )
        }
        for sample, key in (("generated", "copy_fraction"), ("heldout", "heldout_copy_fraction")):
            finite = ~got[sample, "distances"].isnan()
            flags = got[sample, "copied"][finite]
            out[key] = flags.mean() if flags.numel() else flags.new_tensor(math.nan)
        out["nonfinite"] = sum(got[s, "distances"].isnan().sum() for s in SAMPLES)
        return out

    def scalars(self) -> dict[str, Tensor]:
        """:meth:`compute` as float32 scalars for ``pl_module.log``, then :meth:`reset`."""
        out = {key: value.to(torch.float32) for key, value in self.compute().items()}
        self.reset()
        return out
