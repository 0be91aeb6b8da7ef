"""The exported pip library stands alone: a wheel built from the repo installs into a clean virtual environment,
where `import vlmkit` and the tour run with the repository out of sight (another working directory, no
sys.path entry pointing at the clone)."""
import os, shutil, subprocess, sys, venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout

def torch_closure() -> list[str]:
    "The distributions torch needs on this platform (torch included), as installed here."
    from importlib.metadata import distribution
    from packaging.requirements import Requirement
    seen, todo = set(), ['torch']
    while todo:
        name = todo.pop()
        key = name.lower().replace('_', '-')
        if key in seen: continue
        seen.add(key)
        for r in distribution(name).requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({'extra': ''}): todo.append(req.name)
    return sorted(seen)

def link_torch(env_dir:Path):
    """This run's torch in the clean venv: its distributions (torch and what it needs) linked, not copied, into a folder
    on the venv's path. The CUDA build is gigabytes of files pip would unpack again; the wheel's other dependencies
    install fresh, and pip sees torch as installed."""
    from importlib.metadata import distribution
    linked = env_dir/'torch-site'; linked.mkdir()
    for name in torch_closure():
        dist = distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (linked/top).exists() and top != '..': (linked/top).symlink_to(src)
    site, = env_dir.glob('lib/python*/site-packages')
    (site/'_vlmkit_torch.pth').write_text(str(linked) + '\n')

def test_wheel_installs_into_a_clean_venv_and_runs_the_tour(tmp_path):
    dist = tmp_path/'dist'
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), str(ROOT)])
    wheel, = dist.glob('vlmkit-*.whl')
    env_dir = tmp_path/'venv'
    venv.create(env_dir, with_pip=True)  # no system site-packages: only what the wheel asks for
    py, bindir = env_dir/'bin'/'python', env_dir/'bin'
    # The clean venv stands for a user's machine: as in scripts/test.sh, a machine-wide pip constraint does not apply
    # (unless PIP_CONSTRAINT names one), and torch is this run's (`link_torch`), so the wheel is tested against the
    # torch the rest of the suite ran on.
    pip_env = {**os.environ, 'PIP_CONSTRAINT': os.environ.get('PIP_CONSTRAINT') or os.devnull}
    try:
        link_torch(env_dir)
        # --no-compile: bytecode is written on import as a user's first run writes it (a third of the install's time here)
        _run([py, '-m', 'pip', 'install', '-q', '--no-compile', str(wheel)], env=pip_env)
        env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
        work = tmp_path/'elsewhere'; work.mkdir()
        where = _run([py, '-c', 'import vlmkit, sys; print(vlmkit.__file__)'], cwd=work, env=env)
        assert str(env_dir) in where and str(ROOT) not in where, where
        # the whole chain, short (data, SFT, evaluation, R-GRPO, evaluation, outputs): what runs is the installed package
        out = _run([bindir/'vlmkit-tour', '--out', str(work/'tour'), '--sft-steps', '1', '--grpo-steps', '1', '--refcoco-images', '4'],
                   cwd=work, env=env)
        assert (work/'tour'/'boxes.png').stat().st_size > 10_000, out
        assert 'Acc@0.5' in (work/'tour'/'table.md').read_text() and '| macro average |' in out
    finally: shutil.rmtree(env_dir, ignore_errors=True)  # gigabytes with a CUDA torch; pytest keeps tmp_path
