"""Every notebook in `nbs/` is a test: its code cells run in order as `nbdev-test` runs them, one pytest item per
notebook, so the notebook tests are counted in pytest's summary. Cells flagged with one of the `tst_flags` of
settings (`#| gpu`, `#| slow`) are skipped unless VLMKIT_TEST_FLAGS names the flag (e.g. 'gpu slow' on a GPU box).

Each executed notebook is also written to `_build/executed/`, so the docs build shows real outputs (plots,
images) without running the notebooks a second time."""
import os
from pathlib import Path
import nbformat, pytest
from nbformat.v4 import new_code_cell, new_notebook
from execnb.shell import CaptureShell
from fastcore.nbio import write_nb
from nbdev.config import get_config
from nbdev.process import NBProcessor

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
# Two test files, so that pytest-xdist's `--dist loadfile` runs them on both workers: the core, family, adaptation and
# data notebooks here, training, evaluation, apps and the index in tests/test_notebooks_apps.py.
FIRST = [p for p in NBS if p.stem < '50']
LATER = [p for p in NBS if p not in FIRST]
EXECUTED = ROOT/'_build'/'executed'
NOTEBOOKS_DONE = ROOT/'_build'/'notebooks-done'   # a file per notebook run, passed or not (tests/conftest.py waits on them)

def notebook_flags() -> tuple[list[str], list[str]]:
    "The flags whose cells are skipped (`tst_flags` of the nbdev settings) and those VLMKIT_TEST_FLAGS forces back in."
    skip = get_config(ROOT).tst_flags.split()
    force = os.environ.get('VLMKIT_TEST_FLAGS', '').split()
    assert {'gpu', 'slow'} <= set(skip)
    return skip, force

def skipped(cell, flags:set[str]) -> bool:
    "Is `cell` left out: not code, or flagged with one of `flags` (`#| gpu`, as nbdev parses it into `directives_`)?"
    return cell.cell_type != 'code' or bool(flags & cell.directives_.keys())

def run_notebook(path:Path, skip_flags, force_flags=(), out:Path|None=None):
    "Run the code cells of `path`, less those flagged with `skip_flags` but not `force_flags`, stopping at the first error; on success write the executed notebook to `out`."
    flags = set(skip_flags) - set(force_flags)
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    shell = CaptureShell(path)
    cwd, prev = os.getcwd(), os.environ.get('IN_TEST')
    os.environ['IN_TEST'] = '1'
    try:
        os.chdir(path.parent)
        shell.run_all(nb, exc_stop=True, preproc=lambda cell: skipped(cell, flags), cell_timeout=600)
    except Exception:
        raise AssertionError(f"{path.name} failed:\n{shell.prettytb(fname=path) or ''}") from None
    finally:
        os.chdir(cwd)
        if prev is None: os.environ.pop('IN_TEST', None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, out)

def check_notebook(nb:Path):
    "Run notebook `nb` as a test, its executed copy kept for the docs; its mark in NOTEBOOKS_DONE whatever the outcome."
    try: run_notebook(nb, *notebook_flags(), EXECUTED/nb.name)
    finally:                          # the docs build waits for every notebook (tests/conftest.py: wait_for_notebooks)
        NOTEBOOKS_DONE.mkdir(parents=True, exist_ok=True); (NOTEBOOKS_DONE/nb.stem).touch()

@pytest.mark.parametrize('nb', FIRST, ids=[p.stem for p in FIRST])
def test_notebook(nb): check_notebook(nb)

def test_flagged_cells_are_skipped_unless_named(tmp_path, monkeypatch):
    "A `#| gpu` or `#| slow` cell that would fail is skipped by default and run when VLMKIT_TEST_FLAGS names its flag."
    nb = new_notebook(cells=[new_code_cell('x = 1'), new_code_cell('#| gpu\nraise RuntimeError("gpu cell ran")'),
                             new_code_cell('#|slow\nraise RuntimeError("slow cell ran")'), new_code_cell('assert x == 1')])
    path = tmp_path/'flags.ipynb'; nbformat.write(nb, path)
    monkeypatch.delenv('VLMKIT_TEST_FLAGS', raising=False)
    run_notebook(path, *notebook_flags())
    for flag in 'gpu', 'slow':
        monkeypatch.setenv('VLMKIT_TEST_FLAGS', flag)
        with pytest.raises(AssertionError, match=f'{flag} cell ran'): run_notebook(path, *notebook_flags())
    # the project's own flagged cells are seen as flagged too
    cells = [c for p in NBS for c in NBProcessor(p, rm_directives=False).nb.cells]
    for flag in 'gpu', 'slow': assert any(skipped(c, {flag}) and c.cell_type == 'code' for c in cells), flag
