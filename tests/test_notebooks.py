"""Every notebook in `nbs/` is a test: its cells run as `nbdev-test` runs them (cells flagged with `tst_flags`
skipped), one pytest item per notebook, so the notebook tests are counted in pytest's summary.

Each executed notebook is also written to `_build/executed/`, so the docs build shows real outputs (plots,
images) without running the notebooks a second time."""
import os, time
from pathlib import Path
import pytest
from execnb.shell import CaptureShell
from fastcore.nbio import write_nb
from nbdev.config import get_config
from nbdev.process import NBProcessor
from nbdev.test import _skip_cell

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
EXECUTED = ROOT/'_build'/'executed'

def notebook_flags():
    "Cells flagged `tst_flags` are skipped unless VLMKIT_TEST_FLAGS names them (e.g. 'gpu slow' on a GPU box)."
    skip = get_config(ROOT).tst_flags.split()
    force = os.environ.get('VLMKIT_TEST_FLAGS', '').split()
    assert {'gpu', 'slow'} <= set(skip)
    return skip, force

def run_notebook(path:Path, skip_flags, force_flags, out:Path|None=None):
    "Run `path` like `nbdev.test.test_nb`; on success write the executed notebook to `out`."
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    shell = CaptureShell(path)
    cwd, prev = os.getcwd(), os.environ.get('IN_TEST')
    os.environ['IN_TEST'] = '1'
    try:
        os.chdir(path.parent)
        shell.run_all(nb, exc_stop=True, preproc=_skip_cell(nb, skip_flags, force_flags), cell_timeout=600)
    except Exception:
        raise AssertionError(f"{path.name} failed:\n{shell.prettytb(fname=path) or ''}") from None
    finally:
        os.chdir(cwd)
        if prev is None: os.environ.pop('IN_TEST', None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, out)

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    skip, force = notebook_flags()
    run_notebook(nb, skip, force, EXECUTED/nb.name)
