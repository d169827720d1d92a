#!/usr/bin/env bash
# The two commands of a fresh clone (README "Quick start"); each sets up what it needs on first use.
#
#   ./dev.sh demo    # the main job: train LGMSNet-2D on the embedded MNI152 template, then evaluate it
#   ./dev.sh test    # the test suite (CPU; the Triton kernels in triton's interpreter)
#
# Set-up (first use, or after setup.py changed): a project-local virtual environment in .venv
# (SEGFUSE_VENV to change it) with the CPU build of torch (pinned, with the torchvision built for it)
# and this package in editable mode with its dev and mni152 extras. A system Python whose venv module
# lacks ensurepip (Debian/Ubuntu without python3-venv) gets a pip-less venv that the system pip fills.
# GPU users: SEGFUSE_TORCH="torch --index-url https://download.pytorch.org/whl/cu126" ./dev.sh test
# (or any pip requirement for the CUDA torch of their driver). Extra arguments go to pytest / to
# `segfuse train` (e.g. ./dev.sh test -k loss; ./dev.sh demo --iterations 200).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SEGFUSE_VENV:-.venv}
TORCH=${SEGFUSE_TORCH:-"torch==2.13.0 torchvision==0.28.0"}
PY="$VENV/bin/python"
STAMP="$VENV/.segfuse-installed"

setup() {
    if [ -f "$STAMP" ] && [ ! setup.py -nt "$STAMP" ]; then
        return
    fi
    if [ ! -x "$PY" ]; then
        echo "dev.sh: creating the virtual environment $VENV" >&2
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            python3 -m venv --without-pip "$VENV"
            python3 -m pip --python "$PY" install -q pip || {
                echo "dev.sh: cannot put pip into $VENV: install python3-venv (apt install python3-venv) or" \
                     "python3-pip, then run this again" >&2
                exit 1
            }
        fi
    fi
    echo "dev.sh: installing torch ($TORCH) and segfuse into $VENV (first use only)" >&2
    "$PY" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086  # TORCH is a list of pip arguments
    "$PY" -m pip install -q $TORCH
    "$PY" -m pip install -q -e ".[dev,mni152]"
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    touch "$STAMP"
}

case "${1:-}" in
    demo)
        shift
        setup
        resume=()  # a second demo continues (or, when finished, just re-evaluates) the first one's run
        [ -f runs/mni152/last.pt ] && resume=(--resume)
        "$VENV/bin/segfuse" train --model lgmsnet --data mni152 --spacing 2 2 2 --batch-size 4 --iterations 80 \
            --iters-per-epoch 20 --val-every 2 --augment flips --run-dir runs/mni152 "${resume[@]}" "$@"
        "$VENV/bin/segfuse" evaluate --run runs/mni152
        ;;
    test)
        shift
        setup
        "$PY" -m pytest -q -p no:cacheprovider --durations=15 "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo [segfuse train options] | ./dev.sh test [pytest options]" >&2
        exit 2
        ;;
esac
