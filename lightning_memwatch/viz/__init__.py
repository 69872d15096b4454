"""TensorBoard artifacts: histograms, figures, image strips, the train and val runs and the
custom-scalars layout.

Pure functions the callbacks call on global rank zero when a ``TensorBoardLogger`` is attached.
matplotlib is optional (the ``[viz]`` extra) and imported only inside the
figure functions; without it they return ``None`` after one warning.
"""

from lightning_memwatch.viz.figures import (
    add_figure,
    histogram_figure,
    profile_figure,
    spectrum_figure,
)
from lightning_memwatch.viz.images import as_images, image_strip, pairs_grid, upscale
from lightning_memwatch.viz.layout import add_layout, custom_scalars_layout
from lightning_memwatch.viz.splits import log_split_runs, write_split_scalars
from lightning_memwatch.viz.writer import add_histograms, global_step, tensorboard_writer

__all__ = [
    "add_figure",
    "add_histograms",
    "add_layout",
    "as_images",
    "custom_scalars_layout",
    "global_step",
    "histogram_figure",
    "image_strip",
    "log_split_runs",
    "pairs_grid",
    "profile_figure",
    "spectrum_figure",
    "tensorboard_writer",
    "upscale",
    "write_split_scalars",
]
