#!/usr/bin/env bash
# Run every vlmkit check, exactly as CI does: install what a user gets into a venv of this script's own, check the
# notebooks are clean and the library exported, then run every notebook and tests/ through pytest (docs site built
# and checked in headless Chromium inside that run), ending with pytest's one summary line.
#
# Settings (environment):
#   VLMKIT_VENV            the venv to create or reuse (default: .venv in the repository root)
#   PYTHON                 the interpreter that creates it (default: python3; 3.10 or newer)
#   VLMKIT_TORCH_INDEX     an index to take torch from first (default: PyTorch's CPU index where no NVIDIA GPU is
#                          visible, none where one is; set it empty to take torch from pip's usual index)
#   VLMKIT_PIP_CONSTRAINT  a pip constraints file to test under on purpose (default: none; see below)
# Arguments go to pytest (e.g. `bash scripts/test.sh -k boxes`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Newest allowed versions, nothing hidden: the only bounds are pyproject.toml's. A machine can cap versions behind
# the user's back through pip's configuration (`constraint = ...` in /etc/pip.conf, /etc/xdg/pip/pip.conf or the
# user's pip.conf). PIP_CONSTRAINT in the environment overrides every config file, and /dev/null is an empty list,
# so every pip call below (and in tests/, which inherit it) runs without such a cap. An empty PIP_CONSTRAINT would
# not do: pip then falls back to the config files. Index and mirror settings are kept: they say where packages come
# from, not which versions win.
export PIP_CONSTRAINT=${VLMKIT_PIP_CONSTRAINT:-/dev/null}
# Only the venv's packages and this clone: a PYTHONPATH could put another copy of vlmkit or a dependency first.
unset PYTHONPATH PYTHONHOME

VENV=${VLMKIT_VENV:-.venv}
echo "== install into $VENV (newest versions pyproject.toml allows)"
"$VENV/bin/python" -c '' 2>/dev/null || "${PYTHON:-python3}" -m venv "$VENV"
VENV=$(cd "$VENV" && pwd)
export VIRTUAL_ENV=$VENV PATH="$VENV/bin:$PATH"
PY=$VENV/bin/python
pip_install() { "$PY" -m pip install -q --upgrade --upgrade-strategy eager "$@"; }  # a reused venv moves up too
pip_install pip

# PyPI's torch for Linux is the CUDA build (about 3 GB of CUDA libraries). Without a visible NVIDIA GPU, take
# PyTorch's CPU build from its own index where that index answers; the eager upgrade below keeps it (2.x.y+cpu
# sorts above PyPI's 2.x.y) unless PyPI has a newer release. The index is probed first (10 s at most): pip would
# retry an unreachable one, or settle for an older torch from another of its sources.
if [ -z "${VLMKIT_TORCH_INDEX+set}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VLMKIT_TORCH_INDEX=
  else VLMKIT_TORCH_INDEX=https://download.pytorch.org/whl/cpu; fi
fi
if [ -n "$VLMKIT_TORCH_INDEX" ]; then
  torch_req=$(grep -oE '"torch[ <>=!~,.0-9*]*"' pyproject.toml | head -n 1 | tr -d '"')
  if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)' \
       "$VLMKIT_TORCH_INDEX" 2>/dev/null; then
    pip_install --index-url "$VLMKIT_TORCH_INDEX" "$torch_req"
  else
    echo "($VLMKIT_TORCH_INDEX does not answer: torch comes from pip's usual index)"
    VLMKIT_TORCH_INDEX=
  fi
fi
pip_install -e ".[dev]"
"$PY" -c "from importlib.metadata import version as v; print('resolved:', ', '.join(f'{p} {v(p)}' for p in
          ('torch', 'transformers', 'peft', 'nbdev', 'pillow', 'numba', 'numpy')))"

if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi

echo "== notebooks clean and library in sync"
nbdev-export
"$PY" scripts/build_docs.py --readme
nbdev-clean
if ! git diff --exit-code --stat; then
  echo "nbdev-export / nbdev-clean changed the files above: run them and commit" >&2
  exit 1
fi

echo "== tests (notebooks, tests/, docs site)"
rc=0
# Two workers (pytest-xdist), one per core: most tests spend their time in Python, not in parallel kernels. A test
# file's tests stay on one worker (`loadfile`: its module fixtures are built once); the notebooks are two files. The
# files go out in the order tests/conftest.py gives them, longest first (xdist would order them by their number of tests).
"$PY" -m pytest tests -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder "$@" || rc=$?
[ $rc -eq 5 ] && { echo "pytest collected no tests" >&2; exit 1; }
exit $rc
