#!/bin/sh
# The prepared device check (README, "GPU inference"): one command, < 10 min on an H100/H200, no downloads.
cd "$(dirname "$0")/.." && exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
