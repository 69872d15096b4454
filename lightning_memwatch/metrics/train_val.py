"""The state every family shares: per-sample values of the train and the validation probe."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_memwatch.functional.stats import ks_pvalue, rank_effect

SPLITS = ("train", "val")
#: Per-descriptor statistics of :meth:`TrainValGap.compute` besides ``nonfinite``.
BASE_STATS = ("train", "val", "gap", "ks_pvalue")
#: The effect size and its bounds, added when :attr:`TrainValGap.effects` is on.
EFFECT_STATS = ("effect", "effect_lower", "effect_upper")


class TrainValGap(Metric):
    """Per-sample descriptors of a train and a validation probe, and how the two differ.

    Subclasses name their ``descriptors`` and turn what they are given into per-sample values
    for :meth:`_append`. Each descriptor keeps one ``cat`` state per split, so under DDP
    torchmetrics gathers the samples of every rank before :meth:`compute`.

    :meth:`compute` returns, for each descriptor ``d``:

    - ``d/train``, ``d/val``: means over the finite per-sample values (NaN and inf dropped);
    - ``d/gap``: ``train - val``;
    - ``d/ks_pvalue``: two-sample KS p-value of the finite values
      (:func:`~lightning_memwatch.functional.stats.ks_pvalue`);
    - ``d/nonfinite``: how many per-sample values, train and val together, were dropped;
    - with :attr:`effects` on, ``d/effect``: Cliff's delta ``P(train > val) - P(train < val)``
      of the finite values, and ``d/effect_lower``, ``d/effect_upper``: its one-sided 95 %
      DeLong bounds (:func:`~lightning_memwatch.functional.stats.rank_effect`). Unlike the
      KS p-value the effect does not grow with the probe size: a threshold on a bound
      (``effect_lower > 0.5``) asks for a large train-versus-val separation, with confidence.

    A split with no finite value gives NaN means, gap and p-value (and effects: fewer than two).

    A family with a single descriptor whose keys have no descriptor level
    (``memwatch/complexity/{train,val,gap}``, ``memwatch/likelihood/{train,val,gap}``) sets
    ``descriptor_level = False``: :meth:`key` then drops the ``d/`` prefix, so :meth:`compute`
    gives ``train``, ``val``, ``gap``, ``ks_pvalue``, ``nonfinite``. The descriptor keeps its
    name for the states and :meth:`samples`.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    descriptors: tuple[str, ...] = ()
    #: Whether :meth:`compute`'s keys start with the descriptor's name (``d/train``); ``False``
    #: is allowed for a single descriptor only (keys ``train``, ``val``, ...).
    descriptor_level: bool = True
    #: Whether :meth:`compute` adds ``effect``, ``effect_lower`` and ``effect_upper`` per
    #: descriptor; a monitor that turns it on declares the keys through :attr:`stats`.
    effects: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.descriptor_level and len(cls.descriptors) != 1:
            raise TypeError(
                f"{cls.__name__}: `descriptor_level = False` needs exactly one descriptor but it "
                f"has {cls.descriptors!r}"
            )

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for name in self.descriptors:
            for split in SPLITS:
                self.add_state(f"{name}_{split}", default=[], dist_reduce_fx="cat")

    @staticmethod
    def _check_split(split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"Expected `split` to be one of {SPLITS} but got {split!r}")

    @property
    def stats(self) -> tuple[str, ...]:
        """The per-descriptor statistics :meth:`compute` gives, ``nonfinite`` aside."""
        return BASE_STATS + EFFECT_STATS if self.effects else BASE_STATS

    def key(self, name: str, stat: str) -> str:
        """The :meth:`compute` key of descriptor ``name``'s ``stat`` (``train``, ``val``,
        ``gap``, ``ks_pvalue``, ``nonfinite``): ``name/stat``, or ``stat`` without a
        descriptor level."""
        return f"{name}/{stat}" if self.descriptor_level else stat

    def _append_one(self, values: Tensor, split: str, what: str) -> None:
        """Record the per-sample ``values`` (``(B,)``, called ``what`` in errors) of the one
        descriptor of a single-descriptor family for ``split``."""
        if not isinstance(values, Tensor) or values.ndim != 1:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"Expected `{what}` to be a (B,) tensor but got {got}")
        (name,) = self.descriptors
        self._append(split, {name: values})

    def _append(self, split: str, values: dict[str, Tensor]) -> None:
        """Record per-sample ``values`` (one 1-D tensor per descriptor) for ``split``."""
        self._check_split(split)
        for name, value in values.items():
            getattr(self, f"{name}_{split}").append(value.detach().reshape(-1).to(torch.float64))

    def set_samples(self, values: dict[str, dict[str, Tensor]]) -> None:
        """Replace every state by ``values`` (per split, per descriptor: 1-D per-sample values),
        as if this were the metric's one update; the rolling probe's table is fed this way."""
        self.reset()
        for split, per_descriptor in values.items():
            self._append(split, per_descriptor)
        self._update_count = 1  # an update happened: compute() need not warn

    def _samples(self, name: str, split: str) -> Tensor:
        state = getattr(self, f"{name}_{split}")
        if isinstance(state, list) and not state:
            return torch.empty(0, dtype=torch.float64, device=self.device)
        return dim_zero_cat(state)

    def samples(self, name: str, split: str) -> Tensor:
        """All per-sample values of descriptor ``name`` for ``split``, non-finite included."""
        self._check_split(split)
        if name not in self.descriptors:
            raise ValueError(f"Expected `name` to be one of {self.descriptors} but got {name!r}")
        return self._samples(name, split)

    def scalars(self) -> dict[str, Tensor]:
        """:meth:`compute` as the values a monitor logs, then :meth:`reset`: the descriptors'
        ``nonfinite`` counts become one float ``nonfinite``, the largest of them."""
        out = self.compute()
        counts = [out.pop(k) for k in list(out) if k == "nonfinite" or k.endswith("/nonfinite")]
        out["nonfinite"] = torch.stack(counts).max().to(torch.float32)
        self.reset()
        return out

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name in self.descriptors:
            train, val = self._samples(name, "train"), self._samples(name, "val")
            means = {}
            for split, values in (("train", train), ("val", val)):
                finite = values[torch.isfinite(values)]
                means[split] = finite.mean() if finite.numel() else values.new_tensor(math.nan)
            nonfinite = (~torch.isfinite(train)).sum() + (~torch.isfinite(val)).sum()
            out[self.key(name, "train")] = means["train"]
            out[self.key(name, "val")] = means["val"]
            out[self.key(name, "gap")] = means["train"] - means["val"]
            out[self.key(name, "ks_pvalue")] = train.new_tensor(ks_pvalue(train, val))
            out[self.key(name, "nonfinite")] = nonfinite
            if self.effects:
                out.update(self.effect_scalars(name, train, val))
        return out

    def effect_scalars(self, name: str, train: Tensor, val: Tensor) -> dict[str, Tensor]:
        """``effect``, ``effect_lower``, ``effect_upper`` of descriptor ``name``'s samples."""
        values = rank_effect(train, val)
        pairs = zip(EFFECT_STATS, values, strict=True)
        return {self.key(name, s): train.new_tensor(v) for s, v in pairs}
