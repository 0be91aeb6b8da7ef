#!/usr/bin/env bash
# Run every vlmkit check, exactly as CI does: install, notebooks clean and exported, all notebooks and tests/
# through pytest (docs site built and checked in headless Chromium inside that run), one pytest summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== install"
# A CPU torch is enough for the tests; on machines that keep a local torch 2.13.0 wheel pip takes that file.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q "torch==2.13.0" || $PY -m pip install -q torch
$PY -m pip install -q -e ".[dev]"
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi

echo "== notebooks clean and library in sync"
nbdev-export
$PY scripts/build_docs.py --readme
nbdev-clean
if ! git diff --exit-code --stat; then
  echo "nbdev-export / nbdev-clean changed the files above: run them and commit" >&2
  exit 1
fi

echo "== tests (notebooks, tests/, docs site)"
rc=0
$PY -m pytest tests -q -p no:cacheprovider "$@" || rc=$?
[ $rc -eq 5 ] && { echo "pytest collected no tests" >&2; exit 1; }
exit $rc
