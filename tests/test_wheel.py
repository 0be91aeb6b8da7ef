"""The exported pip library stands alone: a wheel built from the repo installs into a clean virtual environment,
where `import vlmkit` and the tour run with the repository out of sight (another working directory, no
sys.path entry pointing at the clone)."""
import os, subprocess, sys, venv
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout

def test_wheel_installs_into_a_clean_venv_and_runs_the_tour(tmp_path):
    dist = tmp_path/'dist'
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), str(ROOT)])
    wheel, = dist.glob('vlmkit-*.whl')
    env_dir = tmp_path/'venv'
    venv.create(env_dir, with_pip=True)  # no system site-packages: only what the wheel asks for
    py, bindir = env_dir/'bin'/'python', env_dir/'bin'
    # the same CPU torch as the test machine (pip takes a locally kept wheel where there is one), then the wheel
    import torch
    _run([py, '-m', 'pip', 'install', '-q', f"torch=={torch.__version__.split('+')[0]}"])
    _run([py, '-m', 'pip', 'install', '-q', str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    work = tmp_path/'elsewhere'; work.mkdir()
    where = _run([py, '-c', 'import vlmkit, sys; print(vlmkit.__file__)'], cwd=work, env=env)
    assert str(env_dir) in where and str(ROOT) not in where, where
    out = _run([bindir/'vlmkit-tour', '--out', str(work/'tour')], cwd=work, env=env)
    assert (work/'tour'/'tour.png').stat().st_size > 10_000, out
    assert 'Acc@0.5' in out
