"""Every notebook in `nbs/` is a test: run its cells (minus the `tst_flags` ones) the way `nbdev-test` does,
one pytest item per notebook, so the notebook tests are counted in pytest's summary."""
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

def _flags():
    "Skip `tst_flags` cells unless VLMKIT_TEST_FLAGS names them (e.g. 'gpu slow' on a GPU box)."
    skip = get_config(ROOT).tst_flags.split()
    force = os.environ.get('VLMKIT_TEST_FLAGS', '').split()
    return skip, force

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    skip, force = _flags()
    ok, _ = run_notebook(nb, skip_flags=skip, force_flags=force, basepath=ROOT)
    assert ok, f"{nb.name} failed; its traceback is printed above"
