"""The memwatch monitors at their defaults: the four overhead targets of issue 12 in one run.

    python benchmarks/overhead.py               # all four parts: 534 s on 2 quiet CPU cores
    python benchmarks/overhead.py --quick       # a smoke run of every part: 107 s (loaded machine)
    python benchmarks/overhead.py --part 3      # one part: 1, 2, 3, 4 or all (2 is read from 1)

Measured run times: the full run took 534 s (load average about 1 on the 2 cores), of which part
4 was about 235 s (the conv VAE's whole-probe measurements at latent 100 cost 30-45 s each);
``--quick`` took 107 s with the machine loaded by other jobs (load average 3).

1. **Fit time with / without the monitors** of the README's snippet at their defaults
   (``GeometryMonitor(encoder="encode")``, ``RecoveryMonitor(encoder="encode")``,
   ``MemorizationEarlyStopping()``; ``probe_size=64``, ``every_n_epochs=1``,
   ``max_overhead=0.05``), and with ``LikelihoodMonitor(encoder="encode")`` added, first
   measurement included, a ``TensorBoardLogger`` in every fit (so artifacts are written). On the
   demo VAE (``examples/digits_vae.py``: latent 8, 1,400 digits, batch 64, 256 validation
   digits) over 30 epochs (median of 2 fits per configuration) and 300 epochs (1 fit), and on
   a conv VAE (``benchmarks/conv_models.py``: latent 32, the digits upsampled to 28 x 28) over
   50 epochs (1 fit). The configurations alternate their order from one repeat to the next and
   every fit starts from the same seed. Target: ratio <= 1.05. Also printed: the monitors' own
   accounting (seconds measuring / seconds of the run outside them, what ``max_overhead``
   bounds) and their logged ``memwatch/<family>/seconds``.
2. **How many epochs each monitor measured** (``probe_size > 0``) in every fit of part 1, from
   the monitors' own ``measurements`` and the logged ``memwatch/<family>/probe_size``, with the
   slice sizes used. Target: >= 10 for every monitor in the 300-epoch VAE fit.
3. **Caught at the defaults**: the demo's runs A (32 digits) and B (1,400 digits) of
   ``examples/vae_memorization.py`` (its ``runs()``: batches, passes, epochs), every monitor at
   its defaults with the budget on except ``probe_size=32`` (run A has 32 training digits),
   with the README's rule ``MemorizationEarlyStopping(monitor="memwatch/recovery/ks_pvalue",
   threshold=0.01, mode="below", patience=2, report_only=True)``; once with the snippet's two
   monitors, once with ``LikelihoodMonitor`` too. Printed: the epoch the rule fires next to the
   epoch of A's best ``val_loss``, the fresh KS p-values it saw, and where the demo's own rule
   (``patience=1``) would fire. Target: A fires, B never does.
4. **Cost of measuring every sample of a 64 + 64 probe once**, artifacts included, this code
   against commit ``47f86a5`` (the code before the budget / rolling-probe round), each in its
   own subprocess (``benchmarks/probe_compare.py``). Targets: <= 0.3x on the demo VAE, <= 0.5x
   on the conv VAE with latent 100; and per-sample agreement.

``--threads 1`` (default): the models are tiny, so intra-op threads only add synchronisation.
The package measured is this checkout's (its root is put first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

import lightning as L
import probe_compare
from conv_models import ConvVAE, UpsampledDigitsDataModule
from digits_vae import DigitsDataModule, DigitsVAE, cpu_trainer, quiet
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from vae_memorization import ValLossHistory, runs

import lightning_memwatch
from lightning_memwatch import (
    GeometryMonitor,
    LikelihoodMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
)

#: The README's early-stopping rule (its "Use it" snippet), report-only so that runs finish.
README_RULE = {
    "monitor": "memwatch/recovery/ks_pvalue",
    "threshold": 0.01,
    "mode": "below",
    "patience": 2,
}
CONFIGS = ("without", "snippet", "snippet+likelihood")
#: The family whose logged ``probe_size`` says whether a monitor measured.
FIRST_FAMILY = {"GeometryMonitor": "spectrum", "RecoveryMonitor": "recovery"}
FIRST_FAMILY["LikelihoodMonitor"] = "likelihood"


class Case(NamedTuple):
    label: str
    model: Callable[[], L.LightningModule]
    data: Callable[[int], L.LightningDataModule]
    epochs: int
    repeats: int


def cases(quick: bool) -> list[Case]:
    """The fits of part 1 (``quick``: a few epochs each)."""
    vae, digits = (lambda: DigitsVAE(latent_dim=8)), (lambda s: DigitsDataModule(1400, 256, 64, s))
    conv = lambda: ConvVAE(latent_dim=32)  # noqa: E731
    upsampled = lambda s: UpsampledDigitsDataModule(1400, 256, 64, s)  # noqa: E731
    if quick:
        return [Case("demo VAE", vae, digits, 3, 1), Case("conv VAE", conv, upsampled, 2, 1)]
    return [
        Case("demo VAE, 30 epochs", vae, digits, 30, 2),
        Case("demo VAE, 300 epochs", vae, digits, 300, 1),
        Case("conv VAE (latent 32, 28x28), 50 epochs", conv, upsampled, 50, 1),
    ]


def monitors(config: str, **common: Any) -> list[Callback]:
    """The memwatch callbacks of a configuration (README snippet, optionally + likelihood)."""
    if config == "without":
        return []
    out: list[Callback] = [
        GeometryMonitor(encoder="encode", **common),
        RecoveryMonitor(encoder="encode", **common),
    ]
    if config == "snippet+likelihood":
        out.append(LikelihoodMonitor(encoder="encode", **common))
    return out


class ProbeSizes(Callback):
    """Each epoch's logged ``memwatch/<family>/probe_size`` and ``/seconds`` (``None``: absent)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float | None]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.epochs.append(
            {k: float(v) for k, v in metrics.items() if k.endswith(("/probe_size", "/seconds"))}
        )


def fit(
    model: L.LightningModule,
    data: L.LightningDataModule,
    epochs: int,
    callbacks: list[Callback],
    log_dir: str,
    name: str,
) -> dict[str, Any]:
    """One ``trainer.fit`` with a ``TensorBoardLogger``; wall time and the monitors' books."""
    sizes, history = ProbeSizes(), ValLossHistory()
    logger = TensorBoardLogger(log_dir, name=name, default_hp_metric=False)
    trainer = cpu_trainer(epochs, logger, [*callbacks, sizes, history])
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    books = {}
    for cb in callbacks:
        if not hasattr(cb, "budget"):
            continue
        family = FIRST_FAMILY[type(cb).__name__]
        logged = [e.get(f"memwatch/{family}/probe_size") for e in sizes.epochs]
        clock = cb.budget.clock
        books[type(cb).__name__] = {
            "measurements": cb.measurements,
            "sizes": [int(s) if s is not None else 0 for s in logged],
            # seconds of each measurement: the monitor's families' logged seconds
            "costs": [
                sum(e.get(f"memwatch/{f}/seconds") or 0.0 for f in cb.families)
                for e, size in zip(sizes.epochs, logged, strict=True)
                if size
            ],
            "spent": cb.budget.spent_seconds,
            "run_seconds": clock.run_seconds,
            "earned": clock.max_overhead * clock.run_seconds / len(clock.max_overheads),
        }
    family_seconds: Counter[str] = Counter()
    for epoch in sizes.epochs:
        for key, value in epoch.items():
            if key.endswith("/seconds") and value is not None:
                family_seconds[key.split("/")[1]] += value
    return {
        "seconds": seconds,
        "books": books,
        "family_seconds": dict(family_seconds),
        "best_val_epoch": history.best_epoch,
        "trainer": trainer,
    }


def sizes_summary(sizes: list[int]) -> str:
    """``"16 x 12, 32 x 3"``: the slice sizes of the measured epochs and how often each."""
    counts = Counter(s for s in sizes if s > 0)
    return ", ".join(f"{size} x {n}" for size, n in sorted(counts.items())) or "none"


def cost_columns(books: dict[str, Any]) -> str:
    """First measurement, mean of the later ones, seconds spent, seconds earned (markdown)."""
    costs = books["costs"]
    later = f"{statistics.mean(costs[1:]):.2f}" if len(costs) > 1 else "-"
    first = f"{costs[0]:.2f}" if costs else "-"
    return f"{first} | {later} | {books['spent']:.2f} | {books['earned']:.2f}"


def part_1(quick: bool, seed: int, tmp: str) -> list[dict[str, Any]]:
    """Part 1 (and the data of part 2): interleaved fits, with / without the monitors."""
    print("\n## Target 1: fit wall time with / without the monitors (defaults)\n", flush=True)
    results = []
    for case in cases(quick):
        fits: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
        for repeat in range(case.repeats):
            order = CONFIGS if repeat % 2 == 0 else CONFIGS[::-1]
            for config in order:
                L.seed_everything(seed, verbose=False)
                watch = monitors(config)
                stopper = [MemorizationEarlyStopping()] if watch else []  # the snippet's third
                run = fit(case.model(), case.data(seed), case.epochs, watch + stopper, tmp, config)
                run.pop("trainer")
                fits[config].append(run)
                print(f"  {case.label}, {config}: {run['seconds']:.1f} s", flush=True)
        results.append({"case": case, "fits": fits})
    print(
        "\n| fit | without (s) | snippet (s) | ratio | + likelihood (s) | ratio | monitors' "
        "own share (snippet / + likelihood) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for result in results:
        fits = result["fits"]
        median = {c: statistics.median(r["seconds"] for r in fits[c]) for c in CONFIGS}
        share = []
        for config in CONFIGS[1:]:
            run = fits[config][0]
            spent = sum(b["spent"] for b in run["books"].values())
            clock = next(iter(run["books"].values()))["run_seconds"]
            share.append(f"{100 * spent / clock:.1f} %")
        print(
            f"| {result['case'].label} | {median['without']:.2f} | {median['snippet']:.2f} | "
            f"{median['snippet'] / median['without']:.3f} | {median['snippet+likelihood']:.2f} | "
            f"{median['snippet+likelihood'] / median['without']:.3f} | {' / '.join(share)} |"
        )
    print(
        "\nAll fits (s): "
        + "; ".join(
            f"{r['case'].label}: "
            + ", ".join(
                f"{c} " + "/".join(f"{f['seconds']:.1f}" for f in r["fits"][c]) for c in CONFIGS
            )
            for r in results
        )
    )
    for result in results:
        fits = result["fits"]
        without = statistics.median(r["seconds"] for r in fits["without"])
        missed = [
            statistics.median(r["seconds"] for r in fits[c])
            - without
            - statistics.median(sum(r["family_seconds"].values()) for r in fits[c])
            for c in CONFIGS[1:]
        ]
        print(
            f"{result['case'].label}: wall time the logged seconds miss (median with - median "
            f"without - logged): " + " / ".join(f"{m:.2f} s" for m in missed)
        )
    print(
        "Logged memwatch/<family>/seconds summed over the (first) fit: "
        + "; ".join(
            f"{r['case'].label}, {c}: "
            + ", ".join(
                f"{family} {s:.2f}" for family, s in r["fits"][c][0]["family_seconds"].items()
            )
            for r in results
            for c in CONFIGS[1:]
        )
    )
    return results


def part_2(results: list[dict[str, Any]]) -> None:
    """Part 2: per fit with monitors, the epochs each monitor measured and its slice sizes."""
    print("\n## Target 2: epochs with a measured value (probe_size > 0), per monitor\n")
    print(
        "| fit | configuration | monitor | measured epochs (own count) | logged | slice sizes | "
        "first measurement (s) | later ones, mean (s) | spent (s) | its share of the budget (s) |"
    )
    print("|---|---|---|---:|---:|---|---:|---:|---:|---:|")
    for result in results:
        for config in CONFIGS[1:]:
            for i, run in enumerate(result["fits"][config]):
                for name, books in run["books"].items():
                    logged = sum(1 for s in books["sizes"] if s > 0)
                    print(
                        f"| {result['case'].label} (fit {i + 1}) | {config} | {name} | "
                        f"{books['measurements']} of {result['case'].epochs} | {logged} | "
                        f"{sizes_summary(books['sizes'])} | {cost_columns(books)} |"
                    )


def fires_at(checks: list[tuple[int, float]], patience: int, threshold: float) -> int | None:
    """The epoch where ``p < threshold`` has held at ``patience + 1`` fresh checks in a row
    (NaN neither counts nor resets), as ``MemorizationEarlyStopping`` decides."""
    consecutive = 0
    for epoch, p in checks:
        if math.isnan(p):
            continue
        consecutive = consecutive + 1 if p < threshold else 0
        if consecutive > patience:
            return epoch
    return None


class FreshPValues(Callback):
    """The KS p-value of every epoch the recovery monitor measured (placed after it)."""

    def __init__(self, recovery: RecoveryMonitor) -> None:
        self.recovery, self.checks = recovery, []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.recovery.last_logged_epoch == epoch and not trainer.sanity_checking:
            value = trainer.callback_metrics.get(README_RULE["monitor"])
            self.checks.append((epoch, math.nan if value is None else float(value)))


def never(epoch: int | None) -> str:
    return "never" if epoch is None else str(epoch)


def part_3(quick: bool, seed: int, tmp: str) -> None:
    """Part 3: the demo's runs A and B at the defaults, budget on, with the README's rule."""
    print("\n## Target 3: the demo's runs at the defaults (budget on), README's rule\n", flush=True)
    print(
        "| monitors | run | epochs | fit (s) | measured epochs (geometry / recovery / "
        "likelihood) | rule (patience 2) fires at | best val_loss epoch | demo rule "
        "(patience 1) would fire at | README rule on memwatch/likelihood/ks_pvalue fires at | "
        "fresh recovery KS p (epoch: p) |"
    )
    print("|---|---|---:|---:|---|---|---:|---|---|---|")
    cost_rows: list[str] = []
    for config in CONFIGS[1:]:
        for run in runs(quick):
            L.seed_everything(seed, verbose=False)
            data = DigitsDataModule(run.n_train, 256, run.batch_size, seed, run.passes)
            watch = monitors(config, probe_size=32)
            stopper = MemorizationEarlyStopping(**README_RULE, report_only=True)
            # the same rule on the likelihood's KS p (a cheaper family: measured more often)
            other = {**README_RULE, "monitor": "memwatch/likelihood/ks_pvalue"}
            extra = [MemorizationEarlyStopping(**other, report_only=True)] if len(watch) > 2 else []
            fresh = FreshPValues(watch[1])
            out = fit(
                DigitsVAE(latent_dim=8),
                data,
                run.epochs,
                [*watch, stopper, *extra, fresh],
                tmp,
                f"{config}_{run.name}",
            )
            cost_rows += [
                f"| {config} | {run.name} | {name} | {books['measurements']} of {run.epochs} | "
                f"{sizes_summary(books['sizes'])} | {cost_columns(books)} |"
                for name, books in out["books"].items()
            ]
            counts = " / ".join(str(b["measurements"]) for b in out["books"].values())
            demo = fires_at(fresh.checks, 1, README_RULE["threshold"])
            checks = ", ".join(f"{e}: {p:.2g}" for e, p in fresh.checks)
            print(
                f"| {config} | {run.name} | {run.epochs} | {out['seconds']:.1f} | {counts} | "
                f"{never(stopper.fired_epoch)} | "
                f"{out['best_val_epoch']} | {never(demo)} | "
                f"{never(extra[0].fired_epoch) if extra else '-'} | {checks} |",
                flush=True,
            )
    print(
        "\nWhere the time went (memwatch/<family>/seconds of the measured epochs):\n\n"
        "| monitors | run | monitor | measured epochs | slice sizes | first measurement (s) | "
        "later ones, mean (s) | spent (s) | its share of the budget (s) |\n"
        "|---|---|---|---:|---|---:|---:|---:|---:|"
    )
    print("\n".join(cost_rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every part")
    parser.add_argument("--part", choices=("1", "2", "3", "4", "all"), default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    start = time.perf_counter()
    print(
        f"lightning_memwatch from {Path(lightning_memwatch.__file__).parent}; torch threads "
        f"{args.threads}; {'quick' if args.quick else 'full'} run"
    )
    with tempfile.TemporaryDirectory() as tmp, quiet(args.threads), warnings.catch_warnings():
        # the rolling statistics call compute() on states filled without update(): torchmetrics
        # warns once per metric; reported, and not what this benchmark measures
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        if args.part in ("1", "2", "all"):
            results = part_1(args.quick, args.seed, tmp)
            part_2(results)
        if args.part in ("3", "all"):
            part_3(args.quick, args.seed, tmp)
    if args.part in ("4", "all"):
        probe_compare.main(quick=args.quick, threads=args.threads, seed=args.seed)
    print(f"\nWhole benchmark: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
