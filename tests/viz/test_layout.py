"""The custom-scalars layout: train/val pairs on one chart, tags matched literally."""

from __future__ import annotations

import re
from itertools import product

from lightning_memwatch.viz import add_layout, custom_scalars_layout

FAMILIES = ("spectrum", "density", "recovery", "likelihood", "complexity")
DESIGN_KEYS = [
    *(
        f"memwatch/spectrum/{d}/{s}"
        for d, s in product(
            ("log_volume", "local_rank", "intrinsic_dim", "log_condition"), ("train", "val", "gap")
        )
    ),
    *(
        f"memwatch/density/{d}/{s}"
        for d, s in product(("dip", "decay"), ("train", "val", "gap", "ks_pvalue"))
    ),
    "memwatch/recovery/mre/train",
    "memwatch/recovery/mre/val",
    "memwatch/recovery/mre_gap",
    "memwatch/recovery/ks_pvalue",
    *(f"memwatch/likelihood/{s}" for s in ("train", "val", "gap", "ks_pvalue")),
    *(f"memwatch/complexity/{s}" for s in ("train", "val", "gap")),
    *(f"memwatch/{f}/{s}" for f, s in product(FAMILIES, ("seconds", "probe_size", "nonfinite"))),
]


def charted_keys(tags: list[str], keys: list[str]) -> list[str]:
    """The keys TensorBoard puts on a chart: those some tag ``re.match`` es (its rule)."""
    return [key for key in keys if any(re.match(tag, key) for tag in tags)]


def test_each_train_val_pair_shares_a_chart_and_every_key_is_charted_once() -> None:
    layout = custom_scalars_layout(DESIGN_KEYS)
    assert list(layout) == [f"memwatch/{family}" for family in FAMILIES]
    charted = []
    for category, charts in layout.items():
        for title, (kind, tags) in charts.items():
            assert kind == "Multiline"
            keys = charted_keys(tags, DESIGN_KEYS)
            assert all(key.startswith(f"{category}/") for key in keys)
            if title.endswith(": train vs val"):
                descriptor = title.removesuffix(": train vs val")  # the family's own pair:
                own = category.endswith(f"/{descriptor}")  # memwatch/likelihood/{train,val}
                stem = category if own else f"{category}/{descriptor}"
                assert keys == [f"{stem}/train", f"{stem}/val"], title
            else:
                assert keys == [f"{category}/{title}"], title
            charted += keys
    assert sorted(charted) == sorted(DESIGN_KEYS)
    spectrum = layout["memwatch/spectrum"]
    assert spectrum["log_volume: train vs val"][1] == [
        "^memwatch/spectrum/log_volume/train$",
        "^memwatch/spectrum/log_volume/val$",
    ]
    assert spectrum["log_volume/gap"][1] == ["^memwatch/spectrum/log_volume/gap$"]
    assert "likelihood: train vs val" in layout["memwatch/likelihood"]
    assert "mre_gap" in layout["memwatch/recovery"]
    assert "dip/ks_pvalue" in layout["memwatch/density"]


def test_keys_with_regex_specials_match_themselves_only() -> None:
    special = ["memwatch/x/a.b(1)+[c]*/train", "memwatch/x/a.b(1)+[c]*/val", "memwatch/x/s|t^$"]
    decoys = ["memwatch/x/aXb(1)+[c]*/train", "memwatch/x/a.b(1)+[c]*/train_ema", "memwatch/x/s"]
    layout = custom_scalars_layout(special)
    pair = layout["memwatch/x"]["a.b(1)+[c]*: train vs val"][1]
    assert charted_keys(pair, special + decoys) == special[:2]
    assert charted_keys(layout["memwatch/x"]["s|t^$"][1], special + decoys) == special[2:]


def test_a_lone_split_and_short_keys_get_charts_of_their_own() -> None:
    layout = custom_scalars_layout(["memwatch/recovery/mre/train", "loss", "a/b", "loss"])
    assert layout == {
        "memwatch/recovery": {"mre/train": ["Multiline", ["^memwatch/recovery/mre/train$"]]},
        "loss": {"loss": ["Multiline", ["^loss$"]]},
        "a": {"b": ["Multiline", ["^a/b$"]]},
    }


class RecordingWriter:
    def __init__(self) -> None:
        self.layouts: list[dict] = []

    def add_custom_scalars(self, layout: dict) -> None:
        self.layouts.append(layout)


def test_add_layout_writes_once_per_call_and_keeps_earlier_keys_of_the_writer() -> None:
    writer, other = RecordingWriter(), RecordingWriter()
    geometry = ["memwatch/spectrum/log_volume/train", "memwatch/spectrum/log_volume/val"]
    recovery = ["memwatch/recovery/mre_gap"]
    add_layout(writer, geometry)
    assert writer.layouts == [custom_scalars_layout(geometry)]
    add_layout(writer, iter(recovery + geometry[:1]))
    assert writer.layouts[1] == custom_scalars_layout(geometry + recovery)
    add_layout(other, recovery)
    assert other.layouts == [custom_scalars_layout(recovery)]
