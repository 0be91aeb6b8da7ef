"""Build the documentation site offline, in pure Python: `python scripts/build_docs.py`.

Quarto (what `nbdev-docs` renders with) cannot be installed on machines without its binary download, so this
renders the same nbdev-processed notebooks with smalldocs into `_docs/` (sidebar, API reference, search).
With Quarto installed, `nbdev-docs` works on the same `nbs/` unchanged.

Notebook outputs come from `_build/executed/` (written by the notebook tests); a notebook not executed yet is
run here first. `#| gpu` and `#| slow` cells are never executed by the docs build: they are marked
`#| eval: false` in the staged copy, so nbdev's doc processors leave them alone too.
"""
import shutil, sys, argparse, importlib.util
from pathlib import Path
from fastcore.nbio import write_nb
from nbdev.process import NBProcessor

ROOT = Path(__file__).resolve().parents[1]
NBS, BUILD = ROOT/'nbs', ROOT/'_build'
STAGE, EXECUTED, OUT = BUILD/'docsrc', BUILD/'executed', ROOT/'_docs'
NEVER_EXEC = {'gpu', 'slow'}

def _notebook_runner():
    spec = importlib.util.spec_from_file_location('nbtests', ROOT/'tests'/'test_notebooks.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def _needs_no_rerun(cell) -> bool:
    "A cell whose outputs are already in the executed notebook: anything but exports and pure-import cells."
    import ast
    flags = cell.directives_.keys()
    if flags & NEVER_EXEC: return True
    if flags & {'export', 'exports', 'exporti'}: return False
    stmts = cell.parsed_()  # nbdev's parse of the top-level statements: directives and magics already handled
    if stmts is None: return True
    return any(not isinstance(n, (ast.Import, ast.ImportFrom)) for n in stmts)

def mark_unexecutable(nb):
    """Prefix `#| eval: false` to the cells nbdev's doc processors must not run again: gpu/slow cells (never
    executed by the docs build) and example cells, whose outputs the executed notebook already holds (nbdev
    re-runs any cell that contains an import, which would run an example without the cells before it)."""
    for cell in nb.cells:
        if cell.cell_type == 'code' and _needs_no_rerun(cell) and '#| eval: false' not in cell.source:
            cell.source = '#| eval: false\n' + cell.source
    return nb

def stage(execute_missing=True):
    "Copy `nbs/` into the staging folder, notebooks replaced by their executed versions."
    if STAGE.exists(): shutil.rmtree(STAGE)
    shutil.copytree(NBS, STAGE, ignore=shutil.ignore_patterns('*.ipynb', '.ipynb_checkpoints'))
    runner = None
    for src in sorted(NBS.glob('*.ipynb')):
        done = EXECUTED/src.name
        if not done.exists() or done.stat().st_mtime < src.stat().st_mtime:
            if not execute_missing: done = src
            else:
                runner = runner or _notebook_runner()
                print(f'executing {src.name} (no fresh executed copy)')
                runner.run_notebook(src, sorted(NEVER_EXEC), [], done)
        write_nb(mark_unexecutable(NBProcessor(done, rm_directives=False, process=True).nb), STAGE/src.name)

def build(execute_missing=True):
    import os
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.serve import proc_nbs
    from nbdev.doclinks import _build_modidx
    os.chdir(ROOT)
    refresh_quarto_yml()
    nbdev_sidebar.__wrapped__(path=NBS)
    _build_modidx()
    stage(execute_missing)
    cache = proc_nbs(str(STAGE), n_workers=0, force=True)
    from smalldocs.site import build as smalldocs_build
    site = smalldocs_build(str(cache), quiet=True)
    for w in site.warnings: print(f'warning: {w}', file=sys.stderr)
    built = cache/'_docs'
    if OUT.exists(): shutil.rmtree(OUT)
    shutil.move(str(built), str(OUT))
    print(f'docs site written to {OUT}')
    return OUT

def readme_text(nb_path=NBS/'index.ipynb'):
    "README.md from the index notebook: its prose and code as written (outputs live in the docs site)."
    from nbdev.process import NBProcessor
    nb = NBProcessor(nb_path, rm_directives=False, process=True).nb
    parts = ['<!-- Generated from nbs/index.ipynb by `python scripts/build_docs.py --readme`: edit the notebook. -->']
    for cell in nb.cells:
        d = getattr(cell, 'directives_', {}) or {}
        if cell.cell_type == 'markdown': parts.append(cell.source.strip())
        elif cell.cell_type == 'code' and not ({'hide', 'export', 'exporti', 'default_exp'} & d.keys()):
            src = '\n'.join(l for l in cell.source.splitlines() if not l.startswith('#|')).strip()
            if src: parts.append(f'```python\n{src}\n```')
    text = '\n\n'.join(parts) + '\n'
    return text

def write_readme():
    (ROOT/'README.md').write_text(readme_text())
    print(f'README.md written from nbs/index.ipynb')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--no-execute', action='store_true', help='use notebooks as saved where no executed copy exists')
    p.add_argument('--readme', action='store_true', help='only write README.md from nbs/index.ipynb')
    a = p.parse_args()
    if a.readme: write_readme()
    else: build(execute_missing=not a.no_execute)
