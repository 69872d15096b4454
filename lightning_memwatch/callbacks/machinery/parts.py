"""The parts of the model a monitor measures: its decoder and encoder, found by attribute name
(``"auto"`` resolved, :mod:`~lightning_memwatch.callbacks.machinery.naming`), their outputs read
by :mod:`~lightning_memwatch.callbacks.machinery.adapters`, on the flat view of latents of any
shape (:mod:`~lightning_memwatch.callbacks.machinery.latent_views`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_memwatch.callbacks.machinery.adapters import Site, adapt_decoder, adapt_encoder
from lightning_memwatch.callbacks.machinery.latent_views import latent_shape, numel
from lightning_memwatch.callbacks.machinery.naming import AUTO, auto_attribute, resolve_attribute


class ModelParts:
    """The decoder / encoder of a monitor (mixed into ``MemwatchMonitor``, which sets the
    attributes below)."""

    decoder_argument: str
    encoder_argument: str | None
    decoder_name: str
    encoder_name: str | None
    decoder_output: str | None
    encoder_output: str | None
    latent_shape: tuple[int, ...] | None
    latent_dim: int | None
    #: whether ``encoder="auto"`` must find one (``LikelihoodMonitor``'s ``q(z|x)``)
    encoder_required = False

    @property
    def uses_decoder(self) -> bool:
        """Whether this monitor calls the decoder (checked at setup and on the probe)."""
        return True

    def _attribute(self, pl_module: pl.LightningModule, name: str, role: str) -> Callable[..., Any]:
        return resolve_attribute(pl_module, name, role)

    def _named(self, pl_module: pl.LightningModule, role: str) -> str | None:
        """The attribute ``decoder=`` / ``encoder=`` names (``"auto"`` resolved)."""
        name = getattr(self, f"{role}_name")
        if name == AUTO:
            name = self._auto(pl_module, role)[0]
        return name

    def _auto(self, pl_module: pl.LightningModule, role: str) -> tuple[str | None, str]:
        required = role == "decoder" or self.encoder_required
        return auto_attribute(pl_module, role, type(self).__name__, required)

    def decoder(self, pl_module: pl.LightningModule) -> Callable[[Tensor], Tensor]:
        """The decoder on flat ``(B, m)`` latents (reshaped to :attr:`latent_shape` before it is
        called), its outputs read as one tensor batch (``decoder_output``)."""
        name = self._named(pl_module, "decoder") or self.decoder_name
        site = Site(type(self).__name__, "decoder", name)
        fn = self._attribute(pl_module, name, "decoder")
        return adapt_decoder(fn, self.decoder_output, site, self.latent_shape)

    def encoder(self, pl_module: pl.LightningModule) -> Callable[[Tensor], Any] | None:
        """The encoder (``None`` without one), its output read by ``encoder_output`` and its
        latents flattened to ``(B, m)``."""
        name = self._named(pl_module, "encoder")
        if name is None:
            return None
        site = Site(type(self).__name__, "encoder", name)
        return adapt_encoder(self._attribute(pl_module, name, "encoder"), self.encoder_output, site)

    def _resolve_names(self, pl_module: pl.LightningModule) -> None:
        """Set ``decoder_name`` / ``encoder_name`` to what the arguments name, ``"auto"``
        resolved and logged (info level, rank zero)."""
        self.decoder_name, self.encoder_name = self.decoder_argument, self.encoder_argument
        roles = ("decoder", "encoder") if self.uses_decoder else ("encoder",)
        for role in roles:
            if getattr(self, f"{role}_argument") == AUTO:
                name, why = self._auto(pl_module, role)
                rank_zero_info(why)
                setattr(self, f"{role}_name", name)

    def _resolve_latent_shape(self, pl_module: pl.LightningModule) -> None:
        """Without an encoder, the latent shape is ``latent_dim=``'s, else the module's
        ``latent_dim`` attribute or hyperparameter (an integer or a tuple)."""
        if self.latent_shape is not None or self.encoder_name is not None:
            return
        if not self.uses_decoder:
            return
        for value in (getattr(pl_module, "latent_dim", None), pl_module.hparams.get("latent_dim")):
            try:
                self.latent_shape = latent_shape(value)
                break
            except ValueError:
                continue
        if self.latent_shape is None:
            raise ValueError(
                f"Expected a latent size for {type(self).__name__} but there is no encoder to "
                "infer it from and the module has no `latent_dim` attribute or hyperparameter: "
                "pass `latent_dim=` (an integer, or a shape such as (4, 8, 8) for latent maps)"
            )
        self.latent_dim = numel(self.latent_shape)
