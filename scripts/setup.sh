#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages, then a cached venv linked at .venv.
# The venv (~6 GB, mostly torch) lives outside the repo, keyed by Python version, and is only
# re-synced when requirements.txt changes, so a fresh clone (CI) pays seconds, not minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-user-static runs the emulated boards; qemu-user (the dynamic build) is the one that
# loads TCG plugins, for counting (tune --counted, run --counted); llvm-19's llvm-mc and
# llvm-mca weigh each counted block by a model of the board's core (19: Debian 12's newest,
# the first whose llvm-mca skips what it cannot analyse).
APT_PACKAGES=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static qemu-user binfmt-support debootstrap llvm-19)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
CACHE="${TVMC_ATTEND_CACHE:-$HOME/.cache/tvmc-attend}"
PYVER="$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
VENV_DIR="$CACHE/venv-py$PYVER"
mkdir -p "$CACHE"
if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo "setup: creating venv at $VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR"
fi
if [ -e .venv ] && [ ! -L .venv ]; then
  echo "setup: .venv exists and is not our link; remove it and re-run" >&2; exit 1
fi
ln -sfn "$VENV_DIR" .venv

REQ_HASH="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
STAMP="$VENV_DIR/.tvmc-attend-req-$REQ_HASH"
if [ ! -f "$STAMP" ]; then
  echo "setup: installing Python packages (first time: several minutes, ~6 GB)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
  rm -f "$VENV_DIR"/.tvmc-attend-req-*
  touch "$STAMP"
fi
# Editable install is cheap; always redo it so the venv points at this clone.
.venv/bin/pip install -q --no-deps --no-build-isolation -e . >/tmp/tvmc-attend-pip-e.log 2>&1 || { cat /tmp/tvmc-attend-pip-e.log; exit 1; }
.venv/bin/python -c "import tvmc_attend" || { echo "setup: tvmc_attend failed to import" >&2; exit 1; }
# The counting plugin (C, ~1 s), cached under $CACHE by its source's hash.
.venv/bin/python -c "from tvmc_attend.device.counting.plugin import plugin_path; plugin_path()" \
  || { echo "setup: building the counting plugin failed" >&2; exit 1; }
# llvm-mca for the counted cost (found, version checked).
.venv/bin/python -c "from tvmc_attend.device.counting.throughput import llvm_tools; llvm_tools()" \
  || { echo "setup: no usable llvm-mca (the counted cost needs LLVM >= 19)" >&2; exit 1; }
# The aarch64 TVM runtime board bundles carry (~5 MB out of the pinned wheels, fetched once and
# cached under $CACHE/runtime; a compile would fetch it too, but not offline).
.venv/bin/python -c "from tvmc_attend.compiler.runtime_libs import runtime_libs; runtime_libs('aarch64')" \
  || { echo "setup: fetching the aarch64 TVM runtime failed" >&2; exit 1; }
