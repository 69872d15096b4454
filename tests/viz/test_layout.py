"""The custom-scalars layout: train/val pairs on one chart, tags matched literally, charts in
reading order."""

from __future__ import annotations

import random
import re
from itertools import product

from lightning_memwatch.viz import add_layout, custom_scalars_layout
from lightning_memwatch.viz.splits import split_scalars

FAMILIES = ("spectrum", "density", "recovery", "likelihood", "complexity")
MONITOR_KEYS = [
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


def runs_of(keys: list[str]) -> dict[str, list[str]]:
    """The tags of each run a monitor writes: the logger's run (``""``) holds the keys, the
    split runs ``train`` and ``val`` the stem of each ``<stem>/train`` / ``<stem>/val`` key."""
    runs = {"": list(keys), "train": [], "val": []}
    for split, values in split_scalars(dict.fromkeys(keys, 0.0)).items():
        runs[split] = list(values)
    return runs


def charted_series(tags: list[str], keys: list[str]) -> list[tuple[str, str]]:
    """``(run, tag)`` of every series a chart of ``tags`` shows over the runs of ``keys``."""
    return [(run, tag) for run, names in runs_of(keys).items() for tag in charted_keys(tags, names)]


def test_each_train_val_pair_shares_a_chart_and_every_key_is_charted_once() -> None:
    layout = custom_scalars_layout(MONITOR_KEYS)
    order = ("recovery", "spectrum", "density", "likelihood", "complexity")
    assert list(layout) == [f"memwatch/{family}" for family in order]
    charted = []
    for category, charts in layout.items():
        for title, (kind, tags) in charts.items():
            assert kind == "Multiline"
            series = charted_series(tags, MONITOR_KEYS)
            assert all(tag.startswith(category) for _, tag in series)
            if title.endswith(": train vs val"):
                descriptor = title.removesuffix(": train vs val")  # the family's own pair:
                own = category.endswith(f"/{descriptor}")  # memwatch/likelihood/{train,val}
                stem = category if own else f"{category}/{descriptor}"
                # one series per split run (two colours), none from the logger's run
                assert series == [("train", stem), ("val", stem)], title
                charted += [f"{stem}/train", f"{stem}/val"]
            else:
                assert series == [("", f"{category}/{title}")], title
                charted.append(f"{category}/{title}")
    assert sorted(charted) == sorted(MONITOR_KEYS)
    spectrum = layout["memwatch/spectrum"]
    assert spectrum["log_volume: train vs val"][1] == ["^memwatch/spectrum/log_volume$"]
    assert spectrum["log_volume/gap"][1] == ["^memwatch/spectrum/log_volume/gap$"]
    assert "likelihood: train vs val" in layout["memwatch/likelihood"]
    assert "mre_gap" in layout["memwatch/recovery"]
    assert "dip/ks_pvalue" in layout["memwatch/density"]


def test_keys_with_regex_specials_match_themselves_only() -> None:
    special = ["memwatch/x/a.b(1)+[c]*/train", "memwatch/x/a.b(1)+[c]*/val", "memwatch/x/s|t^$"]
    decoys = ["memwatch/x/aXb(1)+[c]*/train", "memwatch/x/a.b(1)+[c]*_ema/val", "memwatch/x/s"]
    layout = custom_scalars_layout(special)
    pair = layout["memwatch/x"]["a.b(1)+[c]*: train vs val"][1]
    stem = "memwatch/x/a.b(1)+[c]*"
    assert charted_series(pair, special + decoys) == [("train", stem), ("val", stem)]
    lone = layout["memwatch/x"]["s|t^$"][1]
    assert charted_series(lone, special + decoys) == [("", special[2])]


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


COSTS = ["seconds", "probe_size", "staleness", "nonfinite"]


def triple(descriptor: str) -> list[str]:
    return [f"{descriptor}: train vs val", f"{descriptor}/gap", f"{descriptor}/ks_pvalue"]


def test_categories_and_charts_are_in_reading_order_whatever_order_the_keys_come_in() -> None:
    keys = [
        *MONITOR_KEYS,
        *(f"memwatch/spectrum/{d}/prior" for d in ("log_volume", "log_condition")),
        *(f"memwatch/density/dip/{p}/{s}" for p in ("volume", "prior") for s in ("train", "val")),
        "memwatch/density/decay/unreached/gap",
        "memwatch/density/radius_1",
        "memwatch/density/radius_0",
        *(f"memwatch/samples/{k}" for k in ("heldout_copy_fraction", "seconds", "ct")),
        "memwatch/samples/copy_fraction",
        "memwatch/early_stopping/triggered",
        "memwatch/zeta/thing",
        "memwatch/alpha/thing",
        "loss",
    ]
    expected = {
        "memwatch/recovery": ["mre: train vs val", "mre_gap", "ks_pvalue", *COSTS],
        "memwatch/spectrum": [
            *triple("log_volume")[:2],  # no spectrum KS p in this list
            "log_volume/prior",
            *triple("local_rank")[:2],
            *triple("intrinsic_dim")[:2],
            *triple("log_condition")[:2],
            "log_condition/prior",
            *COSTS[:2],
            COSTS[3],  # no staleness key in this list
        ],
        "memwatch/density": [
            *triple("dip"),
            *triple("decay"),
            "dip/prior: train vs val",
            "dip/volume: train vs val",
            "decay/unreached/gap",
            "radius_0",
            "radius_1",
            *COSTS[:2],
            COSTS[3],
        ],
        "memwatch/likelihood": [
            "likelihood: train vs val",
            "gap",
            "ks_pvalue",
            *COSTS[:2],
            COSTS[3],
        ],
        "memwatch/samples": ["ct", "copy_fraction", "heldout_copy_fraction", "seconds"],
        "memwatch/complexity": ["complexity: train vs val", "gap", *COSTS[:2], COSTS[3]],
        "memwatch/early_stopping": ["triggered"],
        "memwatch/alpha": ["thing"],
        "memwatch/zeta": ["thing"],
        "loss": ["loss"],
    }
    keys += ["memwatch/recovery/staleness"]
    rng = random.Random(0)
    for _ in range(5):
        shuffled = rng.sample(keys, len(keys))
        layout = custom_scalars_layout(shuffled)
        assert {c: list(charts) for c, charts in layout.items()} == expected
        assert list(layout) == list(expected)


def test_add_layout_gives_one_order_whichever_callback_writes_first() -> None:
    geometry = [k for k in MONITOR_KEYS if k.split("/")[1] in ("spectrum", "density")]
    recovery = [k for k in MONITOR_KEYS if k.startswith("memwatch/recovery/")]
    stopper = ["memwatch/early_stopping/triggered"]
    layouts = []
    for order in ((stopper, geometry, recovery), (recovery, stopper, geometry)):
        writer = RecordingWriter()
        for keys in order:
            add_layout(writer, keys)
        layouts.append(writer.layouts[-1])
    assert layouts[0] == layouts[1]
    assert list(layouts[0]) == [
        "memwatch/recovery",
        "memwatch/spectrum",
        "memwatch/density",
        "memwatch/early_stopping",
    ]
