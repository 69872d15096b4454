"""Catch a memorizing VAE on real digits: the same small VAE on 32 digits (A) and on 1,400 (B).

    python examples/vae_memorization.py           # about 1-2 minutes on 2 CPU cores
    python examples/vae_memorization.py --fast    # a seconds-long smoke run (too short to read)

The same VAE (:class:`digits_vae.DigitsVAE`, latent 8) is trained twice on the 8 x 8 digits of
``sklearn.datasets.load_digits`` (scaled to [0, 1]; nothing is downloaded):

- run A on 32 training digits, long enough to memorize them;
- run B on 1,400 training digits, where it generalizes;

both validated on the same 256 held-out digits, with these callbacks attached:

- ``GeometryMonitor``: the decoder's Jacobian spectrum (``log_volume`` is psi, the sum of the log
  singular values: Humayun et al. (2024), eq. 2) and the density family (dip and decay of the
  induced log-density, Feiszli (2017), sec. 4, 5.3) at the encoder's latents of a fixed train
  probe and a fixed validation probe;
- ``RecoveryMonitor``: latent recovery errors (L-BFGS from the encoder's latent and from the
  prior), their median gap ``(MRE_val - MRE_train) / MRE_val`` and the KS test of train against
  validation errors (Webster et al. (2019), eq. 4, 5, sec. 3.3);
- the recommended rule: ``EffectAgreement()`` (the weaker of the recovery errors' and psi's
  95 % bounds of Cliff's delta, train against validation, on the memorization side:
  ``memwatch/agreement/bound``) and ``MemorizationEarlyStopping("memwatch/agreement/bound",
  threshold=0.3, mode="above", report_only=True)``: the rule is evaluated and the epoch where
  it fires recorded, but training is not stopped, so both runs finish and can be compared;
- beside it, labelled as the earlier single-key rule, ``MemorizationEarlyStopping(
  "memwatch/recovery/ks_pvalue", threshold=0.01, patience=1, report_only=True)`` (the KS test
  of Webster et al. (2019), sec. 3.3; it raised false alarms on 2 of 15 generalizing runs of
  ``benchmarks/detection.py`` where the recommended rule raised none), logging its decision as
  ``memwatch/early_stopping/triggered_ks``.

At the end one table gives, per family and key, train, val, gap and KS p of the last measurement
of both runs, the last agreement bound, the epoch where each rule fired in each run, and the
epoch of run A's best validation loss. When a rule fires, its reason is also printed on stderr
(Lightning's console logger) and written to TensorBoard (text ``memwatch/early_stopping``,
scalar ``memwatch/early_stopping/triggered``); at the end of each run the monitors print their
summary there too (text ``memwatch/summary``). TensorBoard logs go under ``--out`` (default
``outputs/memwatch_logs/``, in the gitignored ``outputs/``), one directory per run
(``A_32_digits/version_N``, ``B_1400_digits/version_N``); ``examples/plot_curves.py`` draws
the two runs as a PNG (the command is printed at the end).

Training: Adam at lr 4e-3 (``DigitsVAE``'s default), batch 8 for A with 8 shuffled passes over
its 32 digits per epoch (32 steps; 60 epochs, 1,920 steps), batch 64 for B with one pass
(22 steps; 20 epochs, 440 steps).

Settings that differ from the callbacks' defaults, and why:

- ``max_overhead=float("inf")``: by default a monitor may spend 5 % of the run's time and
  shrinks its probe or skips epochs beyond that. A demo wants every scheduled epoch measured on
  the whole probe, so that the curves of A and B are comparable point by point; on this tiny
  model a measurement costs more than the epochs between two of them. ``benchmarks/overhead.py``
  measures the defaults.
- ``every_n_epochs``: a measurement every 6 epochs of A and every 2 epochs of B (10 points
  each). With a ``TensorBoardLogger`` every measurement also draws its figures (about 0.5 s each
  on a loaded 2-core machine), which is most of the demo's time.
- ``probe_size=32``: run A has only 32 training digits; both runs use the same probe size.
- ``RecoveryMonitor(steps=30, restarts=1)``: the encoder's latent and one prior draw as L-BFGS
  starts, 30 iterations each (defaults: 50 and 2 prior draws), to keep the whole demo within
  about 2 minutes; on this decoder the errors of both probes have settled by then.
- ``radii=(0.25, 0.5)`` for the decay (default ``(0.5, 1.0)``, Feiszli (2017), sec. 5.3, chosen
  for 784-pixel MNIST images in [-1, 1]). The decay describes the density *around* a point, so
  its radii should stay below the distance to the next sample. Here an image is 64 pixels in
  [0, 1]: the L2 distance from a digit to its nearest neighbour among all 1,797 has median 1.01
  and 10th percentile 0.75 (1.83 and minimum 1.04 among run A's 32 digits), so r = 1.0 reaches
  the neighbours' scale, while 0.25 and 0.5 stay below it. Both choices give the same signs
  (seed 0, end of run A: decay -3.98 with (0.5, 1.0), -2.09 with (0.25, 0.5); run B -0.21 and
  -0.06); the defaults left 1 of 64 values NaN (a radius not reached along the line, counted in
  ``memwatch/density/nonfinite``), the smaller radii none.
- ``torch.set_num_threads(1)`` (``--threads``): the model is tiny, so intra-op threads only add
  synchronisation; on a shared 2-core machine two threads made each step about 7x slower.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_vae import DigitsDataModule, DigitsVAE, cpu_trainer, quiet

from lightning_memwatch import (
    EffectAgreement,
    GeometryMonitor,
    MemorizationEarlyStopping,
    RecoveryMonitor,
    fit_summary,
)

#: The recommended rule (``benchmarks/detection.py``): the agreement bound of the recovery errors
#: and psi above 0.3 at one check.
RULE = {"monitor": "memwatch/agreement/bound", "threshold": 0.3, "mode": "above", "patience": 0}
#: The earlier single-key rule, shown beside it (Webster et al. (2019), sec. 3.3): the KS p-value
#: of train vs validation recovery errors below 0.01 at two consecutive measurements.
KS_RULE = {
    "monitor": "memwatch/recovery/ks_pvalue",
    "threshold": 0.01,
    "mode": "below",
    "patience": 1,
    "log_key": "memwatch/early_stopping/triggered_ks",
}

#: Rows of the table: (family, key as logged under memwatch/<family>/, label).
ROWS = (
    ("spectrum", "log_volume", "psi (log volume)"),
    ("spectrum", "local_rank", "nu (local rank)"),
    ("spectrum", "intrinsic_dim", "intrinsic dim"),
    ("spectrum", "log_condition", "log condition"),
    ("density", "dip", "dip"),
    ("density", "decay", "decay"),
    ("recovery", "mre", "MRE (gap: Webster et al.)"),
)


class Run(NamedTuple):
    """One training run of the demo."""

    name: str
    n_train: int
    batch_size: int
    passes: int
    epochs: int
    every_n_epochs: int


def runs(fast: bool) -> tuple[Run, Run]:
    """Run A (memorizes) and run B (generalizes); ``fast`` shrinks both to a smoke run."""
    if fast:
        return Run("A_32_digits", 32, 8, 8, 4, 2), Run("B_1400_digits", 1400, 64, 1, 2, 1)
    return Run("A_32_digits", 32, 8, 8, 60, 6), Run("B_1400_digits", 1400, 64, 1, 20, 2)


class ValLossHistory(Callback):
    """Records ``val_loss`` at the end of every training epoch (validation has run by then)."""

    def __init__(self) -> None:
        self.val_loss: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_loss")
        self.val_loss.append(math.nan if value is None else float(value))

    @property
    def best_epoch(self) -> int | None:
        finite = [(v, e) for e, v in enumerate(self.val_loss) if math.isfinite(v)]
        return min(finite)[1] if finite else None


def callbacks(run: Run, fast: bool, seed: int) -> list[Callback]:
    """The memwatch callbacks of a run: the two monitors, ``EffectAgreement``, the recommended
    rule and the earlier KS rule (see the module docstring for the settings)."""
    common = {
        "decoder": "decoder",
        "encoder": "encode",
        "probe_size": 32,
        "every_n_epochs": run.every_n_epochs,
        "max_overhead": math.inf,  # no budget: see the module docstring
        "seed": seed,
    }
    recovery_steps = {"steps": 10 if fast else 30, "restarts": 1}  # see the module docstring
    return [
        GeometryMonitor(**common, radii=(0.25, 0.5)),
        RecoveryMonitor(**common, **recovery_steps),
        EffectAgreement(),
        MemorizationEarlyStopping(**RULE, report_only=True),
        MemorizationEarlyStopping(**KS_RULE, report_only=True),
    ]


def train(run: Run, out: Path, fast: bool, seed: int) -> dict[str, Any]:
    """Train one run; its final memwatch scalars, early-stopping outcome, val history, log dir."""
    L.seed_everything(seed, verbose=False)
    datamodule = DigitsDataModule(
        n_train=run.n_train, n_val=256, batch_size=run.batch_size, seed=seed, passes=run.passes
    )
    model = DigitsVAE(latent_dim=8)
    history = ValLossHistory()
    monitors = callbacks(run, fast, seed)
    stopper, ks_stopper = monitors[-2:]
    logger = TensorBoardLogger(save_dir=str(out), name=run.name, default_hp_metric=False)
    trainer = cpu_trainer(run.epochs, logger, [*monitors, history])
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    return {
        "metrics": final_metrics(trainer),
        "fired_epoch": stopper.fired_epoch,
        "stopping_reason": stopper.stopping_reason_message,
        "ks_fired_epoch": ks_stopper.fired_epoch,
        "ks_stopping_reason": ks_stopper.stopping_reason_message,
        "summary": fit_summary(trainer),
        "best_val_epoch": history.best_epoch,
        "val_loss": history.val_loss,
        "log_dir": logger.log_dir,
        "seconds": seconds,
        "epochs": run.epochs,
        "n_train": run.n_train,
    }


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The memwatch scalars and losses of the trainer's last epoch, as floats."""
    return {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("memwatch/") or key.endswith("_loss")
    }


def row_values(metrics: dict[str, float], family: str, key: str) -> tuple[float, ...]:
    """(train, val, gap, KS p) of one key; the recovery gap is Webster et al.'s normalized
    ``mre_gap``."""
    base = f"memwatch/{family}/{key}"
    if family == "recovery":
        gap, ks = (
            metrics.get(f"memwatch/{family}/mre_gap"),
            metrics.get(f"memwatch/{family}/ks_pvalue"),
        )
    else:
        gap, ks = metrics.get(f"{base}/gap"), metrics.get(f"{base}/ks_pvalue")
    values = (metrics.get(f"{base}/train"), metrics.get(f"{base}/val"), gap, ks)
    return tuple(math.nan if v is None else v for v in values)


def _cell(value: float, ks: bool = False) -> str:
    if not math.isfinite(value):
        return "nan"
    return f"{value:.2g}" if ks else f"{value:.3g}"


def table(metrics: dict[str, dict[str, float]]) -> str:
    """The demo table (markdown): per key, train / val / gap / KS p of each run, ``metrics``
    being ``{run label: final_metrics(trainer)}`` (the demo: ``A`` then ``B``; the YAML: ``A``)."""
    header = "".join(f" {r} train | {r} val | {r} gap | {r} KS p |" for r in metrics)
    lines = [f"| family / key |{header}", "|---|" + "---:|" * (4 * len(metrics))]
    for family, key, label in ROWS:
        cells = []
        for run in metrics.values():
            tr, va, gap, ks = row_values(run, family, key)
            cells += [_cell(tr), _cell(va), _cell(gap), _cell(ks, ks=True)]
        lines.append(f"| {family} / {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rule_text(stopper: MemorizationEarlyStopping) -> str:
    """The stopper's rule in words: ``memwatch/recovery/ks_pvalue < 0.01 at 2 checks in a row``
    (``at one check`` with ``patience=0``)."""
    symbol = "<" if stopper.mode == "below" else ">"
    checks = stopper.patience + 1
    when = "at one check" if checks == 1 else f"at {checks} checks in a row"
    report = ", report only" if stopper.report_only else ""
    return f"{stopper.monitor} {symbol} {stopper.threshold:g} {when}{report}"


def fired(run: dict[str, Any], key: str = "fired_epoch") -> str:
    epoch = run[key]
    return "did not fire" if epoch is None else f"fired at epoch {epoch}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train runs A and B, print the table and the TensorBoard command; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke run")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/memwatch_logs"), help="log directory"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds data split, model and probes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")

    run_a, run_b = runs(args.fast)
    start = time.perf_counter()
    with quiet(args.threads):
        results = {
            "A": train(run_a, args.out, args.fast, args.seed),
            "B": train(run_b, args.out, args.fast, args.seed),
        }
    results["seconds"] = time.perf_counter() - start
    a, b = results["A"], results["B"]

    print(
        f"\nVAE (latent 8) on sklearn digits, validated on the same 256 held-out digits "
        f"(seed {args.seed}, {results['seconds']:.0f} s in all):\n"
        f"  run A: {a['n_train']} training digits, {a['epochs']} epochs ({a['seconds']:.0f} s)\n"
        f"  run B: {b['n_train']} training digits, {b['epochs']} epochs ({b['seconds']:.0f} s)\n"
        "Last measurement of each run (probe: 32 train and 32 val digits); gap = train - val,\n"
        "except recovery: (MRE_val - MRE_train) / MRE_val.\n"
    )
    print(table({"A": a["metrics"], "B": b["metrics"]}))
    bound = "memwatch/agreement/bound"
    print(
        f"| agreement / bound (recommended rule's key) | | | "
        f"{_cell(a['metrics'].get(bound, math.nan))} | | | | "
        f"{_cell(b['metrics'].get(bound, math.nan))} | |"
    )
    rule = rule_text(MemorizationEarlyStopping(**RULE, report_only=True))
    ks_rule = rule_text(MemorizationEarlyStopping(**KS_RULE, report_only=True))
    print(
        f"\nRecommended rule (EffectAgreement: {rule}):\n"
        f"  run A {fired(a)}; run A's best val_loss was at epoch {a['best_val_epoch']}"
        f" of {a['epochs']}\n"
        f"  run B {fired(b)}\n"
        f"Earlier single-key rule ({ks_rule}):\n"
        f"  run A {fired(a, 'ks_fired_epoch')}\n"
        f"  run B {fired(b, 'ks_fired_epoch')}\n"
    )
    if args.fast:
        print("--fast: a smoke run, too short for run A to memorize; drop it to read the table.")
    print(f"Curves: tensorboard --logdir {args.out}")
    log_dirs = " ".join(shlex.quote(str(run["log_dir"])) for run in (a, b))
    print(f"Figure: python examples/plot_curves.py --runs {log_dirs}")
    return results


if __name__ == "__main__":
    main()
