"""The exported pip library stands alone: a wheel built from the repo installs into a clean virtual environment,
where `import vlmkit` and the tour run with the repository out of sight (another working directory, no
sys.path entry pointing at the clone)."""
import os, shutil, subprocess, sys, venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_entry_points import CASES, FROM_THE_WHEEL  # noqa: E402

def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout

def wheel_requirements(wheel:Path) -> list[str]:
    "The distributions `wheel` requires (no extras), from its METADATA."
    import zipfile
    from email.parser import Parser
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode())
    return meta.get_all('Requires-Dist') or []

def closure(requirements:list[str]) -> list[str]:
    "The distributions `requirements` need on this platform (themselves included, extras and markers evaluated), as installed here."
    from importlib.metadata import distribution
    from packaging.requirements import Requirement
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = req.name.lower().replace('_', '-')
        if key in seen or (req.marker is not None and not req.marker.evaluate({'extra': ''})): continue
        seen.add(key)
        todo += [Requirement(r) for r in distribution(req.name).requires or []]
    return sorted(seen)

def link_requirements(env_dir:Path, wheel:Path):
    """What the wheel requires (and what that requires), as this run installed it, linked into a folder on the clean
    venv's path, not installed again: pip sees the requirements met and installs the wheel alone. CI's install resolved
    the same requirements to their newest versions a minute ago; installing them again (torch's CUDA build is gigabytes)
    would test pip, not vlmkit. What the wheel does not declare is not linked, so an undeclared import fails the tour."""
    from importlib.metadata import distribution
    linked = env_dir/'deps'; linked.mkdir()
    for name in closure(wheel_requirements(wheel)):
        dist = distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (linked/top).exists() and top != '..': (linked/top).symlink_to(src)
    site, = env_dir.glob('lib/python*/site-packages')
    (site/'_vlmkit_deps.pth').write_text(str(linked) + '\n')

def test_wheel_installs_into_a_clean_venv_and_runs_the_tour(tmp_path):
    dist = tmp_path/'dist'
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), str(ROOT)])
    wheel, = dist.glob('vlmkit-*.whl')
    env_dir = tmp_path/'venv'
    venv.create(env_dir, with_pip=True)  # no system site-packages: only what the wheel asks for
    py, bindir = env_dir/'bin'/'python', env_dir/'bin'
    # The clean venv stands for a user's machine: as in scripts/test.sh, a machine-wide pip constraint does not apply
    # (unless PIP_CONSTRAINT names one), and the wheel's requirements are this run's (`link_requirements`), so the wheel
    # is tested against the packages the rest of the suite ran on; pip installs the wheel, and from the index only what the
    # venv's own copies fall short of (Python 3.11's venv brings a setuptools older than torch asks for).
    pip_env = {**os.environ, 'PIP_CONSTRAINT': os.environ.get('PIP_CONSTRAINT') or os.devnull}
    try:
        link_requirements(env_dir, wheel)
        _run([py, '-m', 'pip', 'install', '-q', '--no-compile', str(wheel)], env=pip_env)
        env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
        work = tmp_path/'elsewhere'; work.mkdir()
        where = _run([py, '-c', 'import vlmkit, sys; print(vlmkit.__file__)'], cwd=work, env=env)
        assert str(env_dir) in where and str(ROOT) not in where, where
        # the whole chain, short (data, SFT, evaluation, R-GRPO, evaluation, outputs): what runs is the installed package.
        # test_entry_points.py's success case of the installed wrapper, checked as it checks it
        for script in FROM_THE_WHEEL:
            setup, (args, check) = CASES[script]['setup'], CASES[script]['ok']
            setup(work)
            check(work, _run([bindir/script, *args], cwd=work, env=env))
        assert 'Acc@0.5' in (work/'tour-out'/'table.md').read_text()
    finally: shutil.rmtree(env_dir, ignore_errors=True)  # gigabytes with a CUDA torch; pytest keeps tmp_path
