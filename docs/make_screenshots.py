"""Screenshots of TensorBoard showing a real memwatch run, for the documentation.

    python docs/make_screenshots.py --full     # the full demo: the committed screenshots
    python docs/make_screenshots.py            # the demo in --fast mode (under a minute)

Runs ``examples/vae_memorization.py`` into a temporary log folder, starts ``tensorboard
--logdir <it> --port <free port>``, and takes PNG screenshots of its views with headless
chromium (``chromium`` or ``chromium-browser`` on ``PATH``; on Debian ``apt-get install -y
chromium``) into ``docs/_static/``. Nothing is written outside the temporary folder and
``docs/_static/``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "docs" / "_static"

#: Smoothing off (the curves are sparse: the default 0.6 shows -2.08 for a logged -2.78) and
#: outliers kept in the y range, in the hash parameters of TensorBoard's scalar dashboards.
_PLAIN = "_smoothingWeight=0&_ignoreYOutliers=false"
_RECOVERY = "memwatch%2Frecovery%2F(mre_gap%7Cks_pvalue)%24"
_DENSITY = "memwatch%2Fdensity%2F(dip%7Cdecay)%2F(gap%7Ctrain%7Cval)%24"

#: (file name, URL fragment after the TensorBoard address): what the docs show.
VIEWS: tuple[tuple[str, str], ...] = (
    ("tensorboard_custom_scalars.png", f"#custom_scalars&{_PLAIN}"),
    ("tensorboard_recovery.png", f"#scalars&{_PLAIN}&tagFilter={_RECOVERY}"),
    ("tensorboard_density.png", f"#scalars&{_PLAIN}&tagFilter={_DENSITY}"),
    ("tensorboard_images.png", "#images&tagFilter=memwatch"),
    ("tensorboard_text.png", "#text&tagFilter=memwatch"),
    ("tensorboard_histograms.png", "#histograms&tagFilter=memwatch%2Frecovery"),
)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--virtual-time-budget=15000",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"TensorBoard did not answer at {url} within {seconds} s"
                ) from None
            time.sleep(0.5)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no chromium on PATH: apt-get install -y chromium")


def screenshot(browser: str, url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url],
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full demo instead of --fast")
    args = parser.parse_args(argv)
    browser = chromium()
    STATIC.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as logs:
        demo = [sys.executable, str(ROOT / "examples" / "vae_memorization.py"), "--out", logs]
        subprocess.run(demo + ([] if args.full else ["--fast"]), check=True, cwd=logs)
        port = free_port()
        board = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", logs, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base, 60)
            time.sleep(3)  # let it load the event files
            for name, fragment in VIEWS:
                screenshot(browser, f"{base}/{fragment}", STATIC / name)
                print(f"wrote {(STATIC / name).relative_to(ROOT)}")
        finally:
            board.terminate()
            board.wait(timeout=30)


if __name__ == "__main__":
    main()
