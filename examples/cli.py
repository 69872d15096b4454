"""The demo's run A from a YAML file with Lightning's LightningCLI, and the demo's table at the end.

    python examples/cli.py fit --config examples/config.yaml
    python examples/cli.py fit --config examples/config.yaml --data.n_train=1400 --data.passes=1 \
        --data.batch_size=64 --trainer.max_epochs=20

The model is :class:`digits_vae.DigitsVAE`, the data :class:`digits_vae.DigitsDataModule`; the
callbacks (``GeometryMonitor``, ``RecoveryMonitor``, ``EffectAgreement`` and two
``MemorizationEarlyStopping``: the recommended rule and the earlier KS rule) are listed
under ``trainer.callbacks`` in ``examples/config.yaml`` with ``class_path`` and ``init_args``
(their constructor arguments are plain values, so every one can be set there or on the command
line). ``examples/config.yaml`` holds the settings of run A of ``examples/vae_memorization.py``
(the same seed, data, model, epochs, cadence, budget, recovery steps and radii), so it trains the
same model and measures the same values; at the end of ``fit`` it prints the demo's table for
this one run (:func:`vae_memorization.table`) and what each early-stopping rule did. Unlike the
demo it shows Lightning's progress bar, on which the monitors say what they measure.
``--threads`` (default 1, as the demo) sets torch's intra-op threads. Needs
``jsonargparse[signatures]`` (Lightning's requirement for LightningCLI).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_vae import DigitsDataModule, DigitsVAE
from vae_memorization import final_metrics, fired, rule_text, table

from lightning_memwatch import MemorizationEarlyStopping

#: Column labels of the table by training-set size: the demo's runs A and B.
RUN_LABELS = {32: "A", 1400: "B"}


class MemwatchCLI(LightningCLI):
    """``LightningCLI`` with ``--threads`` and the demo's table printed after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")

    def before_fit(self) -> None:
        threads = self.config[self.subcommand]["threads"]
        if threads < 1:
            raise ValueError(f"Expected `--threads` to be a positive integer but got {threads}")
        torch.set_num_threads(threads)

    def after_fit(self) -> None:
        print(summary(self.trainer, self.datamodule))


def summary(trainer, datamodule: DigitsDataModule) -> str:
    """The table of the run's last measurement and the early-stopping outcome."""
    n_train = len(datamodule.train_images)
    label = RUN_LABELS.get(n_train, f"{n_train} digits")
    lines = [
        f"\nVAE on {n_train} training digits, {trainer.current_epoch} epochs; last measurement"
        " of each family. gap = train - val, except recovery: (MRE_val - MRE_train) / MRE_val.\n",
        table({label: final_metrics(trainer)}),
    ]
    for stopper in trainer.callbacks:
        if isinstance(stopper, MemorizationEarlyStopping):
            outcome = fired({"fired_epoch": stopper.fired_epoch})
            lines.append(f"\nEarly-stopping rule ({rule_text(stopper)}): {outcome}")
    if trainer.logger is not None and trainer.logger.save_dir is not None:
        lines.append(f"Curves: tensorboard --logdir {trainer.logger.save_dir}")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> MemwatchCLI:
    """Run the CLI on ``args`` (``None``: ``sys.argv[1:]``); returns it (``cli.trainer``,
    ``cli.model``). Torch's thread count is restored on return."""
    threads = torch.get_num_threads()
    try:
        return MemwatchCLI(
            DigitsVAE, DigitsDataModule, args=args, save_config_kwargs={"overwrite": True}
        )
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
