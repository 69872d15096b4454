"""RecoveryMonitor's TensorBoard artifacts, from the per-sample results of one measurement.

Written on global rank zero only, at the step of Lightning's scalars:

- ``memwatch/recovery/errors/{train,val}``: histograms of the per-sample recovery errors;
- ``memwatch/recovery/error_distributions``: the two error distributions overlaid on shared bins
  (Webster et al. (2019), fig. 3: a memorizing generator recovers its training
  samples markedly better, so the train histogram sits left of the validation one);
- ``memwatch/recovery/pairs/{train,val}``: target | recovered pairs (Webster et al. (2019), fig. 2),
  when the outputs are images.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from lightning_memwatch.viz.figures import add_figure, histogram_figure
from lightning_memwatch.viz.images import as_images, pairs_grid
from lightning_memwatch.viz.writer import add_histograms

#: Target | recovered pairs shown per split.
PAIRS = 8


def write_recovery(
    writer: SummaryWriter,
    step: int,
    errors: Mapping[str, Tensor],
    pairs: Mapping[str, tuple[Tensor, Tensor]],
    *,
    figures: bool = True,
) -> None:
    """``errors``: per split, the ``(B,)`` recovery errors; ``pairs``: per split, the targets and
    their decoded recovered latents, ``(B, ...)`` each (the first :data:`PAIRS` are shown);
    ``figures``: whether to draw the matplotlib figure too."""
    add_histograms(writer, "memwatch/recovery/errors", dict(errors), step)
    if figures:
        figure = histogram_figure(
            dict(errors), xlabel="recovery error e = mean((f(z*) - x)^2)", title="Recovery errors"
        )
        add_figure(writer, "memwatch/recovery/error_distributions", figure, step)
    for split, (targets, recovered) in pairs.items():
        count = min(PAIRS, len(targets))
        # one scale for targets and recoveries, so their brightness compares
        images = as_images(
            torch.cat([targets[:count], recovered[:count].reshape_as(targets[:count])])
        )
        if images is not None:
            grid = pairs_grid(*images.chunk(2))
            writer.add_image(f"memwatch/recovery/pairs/{split}", grid, step)
