"""`import vlmkit` is cheap and reaches every submodule as an attribute (PEP 562), in a fresh interpreter each."""
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = sorted(p.stem if p.is_file() else p.name for p in (ROOT / 'vlmkit').iterdir()
                if not p.name.startswith('_') and (p.suffix == '.py' or (p / '__init__.py').exists()))


def _run(code:str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_import_is_cheap_and_lists_submodules():
    r = _run("import sys, vlmkit; heavy = [m for m in ('torch', 'transformers', 'numpy', 'PIL') if m in sys.modules]; "
             "print(heavy); print(sorted(set(dir(vlmkit)) & set(%r)))" % (PUBLIC,))
    heavy, listed = r.stdout.splitlines()
    assert heavy == '[]'
    assert listed == str(PUBLIC) and {'boxes', 'internvl', 'ovis', 'tour', 'video'} <= set(PUBLIC)


def test_submodules_are_attributes():
    _run("import vlmkit\n"
         "assert vlmkit.internvl.tiling.plan_tiles(800, 600).num_tiles == 13\n"
         "assert vlmkit.boxes.box_iou([0, 0, 1, 1], [0, 0, 1, 1]).shape == (1, 1)\n"
         "assert {'tiling', 'prompt'} <= set(dir(vlmkit.internvl)) and 'modeling' in dir(vlmkit.ovis)\n"
         "import vlmkit.video\n"
         "assert vlmkit.video is __import__('sys').modules['vlmkit.video']\n"
         "for bad in ('vlmkit.nope', 'vlmkit.internvl.nope', 'vlmkit._modidx_nope'):\n"
         "    try: eval(bad); raise SystemExit(f'{bad} did not raise')\n"
         "    except AttributeError as e: assert bad.rsplit('.', 1)[1] in str(e), e\n")
