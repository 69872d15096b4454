#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the device machine lacks, for Python 3.12 on
# x86-64, without their dependencies: that machine has no network, and has torch 2.11,
# lightning 2.6, torchmetrics, tensorboard, scipy, scikit-learn, matplotlib, rich, pytest,
# pytest-xdist, huggingface-hub 1.33, safetensors, regex, requests, Pillow, filelock, PyYAML,
# zipp and typing-extensions already (/work/.library/device/KINDS.md). Run here, once, where
# pip reaches the package registry:
#
#     bash scripts/prepare_device_wheels.sh
#
# What it fetches and why (the pins are the versions the project's tests ran with here):
#   diffusers            the DDPM of benchmarks/gpu.py and DiffusionMonitor's tests
#   importlib_metadata   a dependency of diffusers the device lacks; lazy-importer is its own
#   jsonargparse, docstring_parser, typeshed_client   jsonargparse[signatures], LightningCLI
# It then prints each wheel's Requires-Dist (extras left out), to check against that list.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    diffusers==0.42.1
    importlib_metadata==10.2.0
    lazy-importer==0.1.0
    jsonargparse==4.53.0
    docstring_parser==0.18.0
    typeshed_client==2.15.0
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)

mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d .whl "${WHEELS[@]}"
for wheel in .whl/*.whl; do
    echo "== ${wheel}"
    unzip -p "${wheel}" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
du -sh .whl
