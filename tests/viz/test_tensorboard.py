"""Artifacts written with a real SummaryWriter and read back as TensorBoard reads them."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from tensorboard import context
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.tensorboard import SummaryWriter

from lightning_memwatch.viz import (
    add_figure,
    add_histograms,
    add_layout,
    as_images,
    histogram_figure,
    image_strip,
    pairs_grid,
    spectrum_figure,
)
from lightning_memwatch.viz.splits import write_split_scalars
from tests.conftest import read_events

LAYOUT_TAG = "custom_scalars__config__"


def read_layout(acc: ea.EventAccumulator) -> layout_pb2.Layout:
    assert LAYOUT_TAG in acc.PluginTagToContent("custom_scalars")
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors(LAYOUT_TAG)[-1].tensor_proto.string_val[0])
    return layout


def test_histograms_figures_images_and_layout_read_back(tmp_path: Path) -> None:
    nan, inf = math.nan, math.inf
    train = torch.tensor([[0.5, nan, 1.5], [-inf, 2.0, 3.0]])  # 4 finite
    val = torch.tensor([1.0, 2.0, inf])  # 2 finite
    digits = as_images(torch.rand(5, 1, 8, 8) * 16)
    strip = image_strip(digits)
    grid = pairs_grid(digits, digits.flip(-1))
    keys = ["memwatch/recovery/mre/train", "memwatch/recovery/mre/val", "memwatch/recovery/mre_gap"]

    writer = SummaryWriter(log_dir=str(tmp_path))
    add_histograms(writer, "memwatch/spectrum/log_s", {"train": train, "val": val}, 7)
    add_histograms(writer, "memwatch/spectrum/log_s", {"train": train[1], "none": val[2:]}, 9)
    add_figure(writer, "memwatch/spectrum/figure", spectrum_figure({"train": val[:2]}), 7)
    errors = {"train": torch.rand(30), "val": torch.rand(30) + 0.5}
    add_figure(
        writer, "memwatch/recovery/errors", histogram_figure(errors, xlabel="e", title="t"), 9
    )
    writer.add_image("memwatch/density/dip_path", strip, 11)
    writer.add_image("memwatch/recovery/pairs", grid, 11)
    add_layout(writer, keys)
    writer.close()

    acc = read_events(tmp_path)
    train_events = acc.Histograms("memwatch/spectrum/log_s/train")
    assert [(e.step, e.histogram_value.num) for e in train_events] == [(7, 4), (9, 2)]
    assert train_events[0].histogram_value.min == 0.5
    assert train_events[0].histogram_value.max == 3.0
    val_events = acc.Histograms("memwatch/spectrum/log_s/val")
    assert [(e.step, e.histogram_value.num) for e in val_events] == [(7, 2)]
    assert "memwatch/spectrum/log_s/none" not in acc.Tags()["histograms"]

    for tag, step in [("memwatch/spectrum/figure", 7), ("memwatch/recovery/errors", 9)]:
        (event,) = acc.Images(tag)
        assert (event.step, event.width, event.height) == (step, 360, 240)  # 6 x 4 in, 60 dpi
    for tag, image in [("memwatch/density/dip_path", strip), ("memwatch/recovery/pairs", grid)]:
        (event,) = acc.Images(tag)
        assert (event.step, event.height, event.width) == (11, *image.shape[1:])

    (category,) = read_layout(acc).category
    assert category.title == "memwatch/recovery"
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts == {
        "mre: train vs val": ["^memwatch/recovery/mre$"],  # the split runs' tag
        "mre_gap": ["^memwatch/recovery/mre_gap$"],
    }


def custom_scalars(logdir: Path):
    """TensorBoard's own custom-scalars plugin over ``logdir``, as ``tensorboard`` serves it."""
    with warnings.catch_warnings():  # tensorboard's vendored html5lib warns on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
        from tensorboard.plugins import base_plugin
        from tensorboard.plugins.custom_scalar import custom_scalars_plugin
        from tensorboard.plugins.scalar import scalars_plugin
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    tb_context = base_plugin.TBContext(
        logdir=str(logdir), multiplexer=multiplexer, data_provider=provider
    )
    tb_context.plugin_name_to_instance = {"scalars": scalars_plugin.ScalarsPlugin(tb_context)}
    return custom_scalars_plugin.CustomScalarsPlugin(tb_context)


def test_tensorboard_shows_every_layout_and_matches_tags_literally(tmp_path: Path) -> None:
    """Served by TensorBoard's own plugin over the logger's run and the split runs below it: a
    train-vs-val chart shows one series per split run (two colours), its key a literal."""
    special = "memwatch/odd/a.b(1)+[x]"
    writer = SummaryWriter(log_dir=str(tmp_path))
    for step in range(3):
        scalars = {
            f"{special}/train": float(step),
            f"{special}/val": 10.0 + step,
            "memwatch/odd/aXb(1)+[x]/train": -1.0,  # decoys: must not match the chart's tag
            f"{special}_ema/val": -2.0,
        }
        for key, value in scalars.items():
            writer.add_scalar(key, value, step)
        write_split_scalars(writer, scalars, step)
    add_layout(writer, ["memwatch/spectrum/seconds"])  # e.g. GeometryMonitor's keys
    add_layout(writer, [f"{special}/train", f"{special}/val"])  # then another callback's
    writer.close()

    plugin = custom_scalars(tmp_path)
    ctx = context.RequestContext()
    layout = json.loads(plugin.layout_impl(ctx, ""))
    charts = {c["title"]: c["chart"] for c in layout["category"]}
    assert list(charts) == ["memwatch/spectrum", "memwatch/odd"]
    (pair,) = charts["memwatch/odd"]
    assert pair["title"] == "a.b(1)+[x]: train vs val"
    (regex,) = pair["multiline"]["tag"]
    runs = sorted(run.run_name for run in plugin._data_provider.list_runs(ctx, experiment_id=""))
    assert runs == [".", "train", "val"]
    shown = {}
    for run in runs:
        matched = plugin.scalars_impl(ctx, run, regex, "")
        assert matched["regex_valid"]
        for tag, events in matched["tag_to_events"].items():
            shown[run, tag] = [(step, value) for _, step, value in events]
    assert shown == {
        ("train", special): [(0, 0.0), (1, 1.0), (2, 2.0)],
        ("val", special): [(0, 10.0), (1, 11.0), (2, 12.0)],
    }
