"""GeometryMonitor's TensorBoard artifacts, from the per-sample values of one measurement.

Written on global rank zero only, at the step of Lightning's scalars:

- ``memwatch/spectrum/log_s/{train,val}``: histograms of log singular values;
- ``memwatch/spectrum/mean_spectrum``: the mean log spectrum, train vs val
  (Feiszli (2017), fig. 2);
- ``memwatch/density/{dip,decay}_samples/{train,val}``: histograms of per-sample scores;
- ``memwatch/density/dip_path_lp``: ``lp`` against output arclength along the first train and
  val dip path (Feiszli (2017), fig. 4, 5);
- ``memwatch/density/decay_line_lp``: ``lp`` along the top singular direction through the first
  train and val point, against signed arclength (Feiszli (2017), fig. 3);
- ``memwatch/density/dip_path_images``: that train path decoded, as an image strip, when the
  outputs are images;
- ``memwatch/complexity/samples/{train,val}``: histograms of the per-sample local complexity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from lightning_memwatch.viz.figures import add_figure, profile_figure, spectrum_figure
from lightning_memwatch.viz.images import as_images, image_strip
from lightning_memwatch.viz.writer import add_histograms


def write_spectrum(
    writer: SummaryWriter, step: int, log_s: Mapping[str, Tensor], *, figures: bool = True
) -> None:
    """``log_s``: per split, ``(B, r)`` log singular values of the probe points; ``figures``:
    whether to draw the matplotlib figure too."""
    add_histograms(writer, "memwatch/spectrum/log_s", dict(log_s), step)
    if not figures:
        return
    means = {split: values.nanmean(dim=0) for split, values in log_s.items() if len(values)}
    add_figure(writer, "memwatch/spectrum/mean_spectrum", spectrum_figure(means), step)


def write_density(
    writer: SummaryWriter,
    step: int,
    scores: Mapping[str, Mapping[str, Tensor]],
    profiles: Mapping[str, Mapping[str, tuple[Tensor, Tensor]]],
    path_outputs: Tensor | None,
) -> None:
    """``scores``: per score name (``dip``, ``decay``), per split, per-sample values;
    ``profiles``: per profile (``dip_path``, ``decay_line``), per split, ``(arclength, lp)``
    (empty when the figures are not due); ``path_outputs``: the decoded train dip path
    ``(T, ...)``."""
    for name, per_split in scores.items():
        add_histograms(writer, f"memwatch/density/{name}_samples", dict(per_split), step)
    for name, curves in profiles.items():
        if not curves:
            continue
        title = name.replace("_", " ")
        figure = profile_figure(
            dict(curves), xlabel="output arclength s", ylabel="lp = log p(z) - psi_k", title=title
        )
        add_figure(writer, f"memwatch/density/{name}_lp", figure, step)
    images = as_images(path_outputs) if path_outputs is not None else None
    if images is not None:
        writer.add_image("memwatch/density/dip_path_images", image_strip(images), step)


def write_complexity(writer: SummaryWriter, step: int, counts: Mapping[str, Tensor]) -> None:
    """``counts``: per split, the ``(B,)`` local complexity of the probe points."""
    add_histograms(writer, "memwatch/complexity/samples", dict(counts), step)


def write_geometry(
    writer: SummaryWriter, step: int, family: str, artifacts: Mapping[str, Any], figures: bool
) -> None:
    """Write one GeometryMonitor family's artifacts (the matplotlib figures when ``figures``):
    ``artifacts`` holds ``log_s``, ``dip``, ``decay``, ``paths``, ``lines``, ``complexity`` per
    split and ``path_outputs``."""
    if family == "spectrum":
        write_spectrum(writer, step, artifacts["log_s"], figures=figures)
    elif family == "density":
        write_density(
            writer,
            step,
            {"dip": artifacts["dip"], "decay": artifacts["decay"]},
            {"dip_path": artifacts["paths"], "decay_line": artifacts["lines"]},
            artifacts.get("path_outputs"),
        )
    else:
        write_complexity(writer, step, artifacts["complexity"])
