"""Every console script of pyproject.toml, run as its installed wrapper runs it (`sys.exit(<function>())`, this
checkout first on the path): exit 0 on success having written what it says, 0 for `--help`, and 2 on bad input with
one line on stderr naming the problem (no usage block, no traceback). The scripts are read from pyproject.toml, so a
new one fails here until it has cases below. Each case runs in a process of its own, forked from one interpreter per
script that has imported the script's module (and torch and transformers, which every case would import; tests/forked.py):
what a fresh interpreter running the wrapper does, without paying for the imports once per case."""
import json, os, re, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest
from PIL import Image

try: import tomllib
except ModuleNotFoundError: import tomli as tomllib  # Python 3.10 (pytest depends on it there)

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']


DRIVER = """
import json, sys
from importlib import import_module
from forked import run_forked
script, module, func, jobs = sys.argv[1:5]
main = getattr(import_module(module), func)
import torch, transformers                       # what nearly every case imports: once, before the forks
for job in json.loads(open(jobs).read()):        # the case: the wrapper's `sys.exit(main())` in the case's folder
    r = run_forked(main, job['args'], cwd=job['cwd'], prog=script)
    for name in ('stdout', 'stderr'): open(job[name], 'w').write(getattr(r, name))
    open(job['status'], 'w').write(str(r.returncode))
"""

def run_cases(script:str, cases:list[tuple[Path, tuple]], tmp:Path) -> list[subprocess.CompletedProcess]:
    "Each `(folder, args)` of `script` run as its wrapper runs it (see the module docstring); a CompletedProcess per case."
    module, func = SCRIPTS[script].split(':')
    jobs = [dict(cwd=str(d), args=[str(a) for a in args], **{k: str(tmp/f'{i}.{k}') for k in ('stdout', 'stderr', 'status')})
            for i, (d, args) in enumerate(cases)]
    (tmp/'jobs.json').write_text(json.dumps(jobs))
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), str(ROOT/'tests'), os.environ.get('PYTHONPATH', '')]), 'MPLBACKEND': 'Agg'}
    r = subprocess.run([sys.executable, '-c', DRIVER, script, module, func, str(tmp/'jobs.json')], env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, f"the driver of {script} failed:\n{r.stderr[-3000:]}"
    read = lambda p: Path(p).read_text() if Path(p).exists() else ''
    return [subprocess.CompletedProcess([script, *j['args']], int(read(j['status']) or -1), read(j['stdout']), read(j['stderr']))
            for j in jobs]


# --- per script: a setup of the working folder, the success case and what it must have written, bad inputs ---

def _clip(d:Path):
    from vlmkit.video import make_test_video
    make_test_video(d / 'clip.mp4', num_frames=30, fps=10)

def _frames_written(d:Path, out:str):
    assert out == 'saved 8 frames to frames\n', out
    files = sorted((d / 'frames').iterdir())
    assert [f.name for f in files] == [f'frame_{k:03d}.png' for k in range(8)]
    for f in files:
        with Image.open(f) as im: assert (im.format, im.size) == ('PNG', (448, 448))

TOUR_SHORT = ('--sft-steps', '2', '--grpo-steps', '1', '--refcoco-images', '4')  # the whole chain, short (nbs/80_tour.ipynb runs it full)
# Success cases run by test_wheel.py instead, through the wrapper pip installs from the wheel (the tour: the whole chain
# once, not twice); their help and bad-input cases run here.
FROM_THE_WHEEL = {'vlmkit-tour'}
TOUR_OUTPUTS = ['table.md', 'table.json', 'boxes.png', 'rewards.png', 'trajectory.png']

def _tour_written(d:Path, out:str):
    import json
    last = out.splitlines()[-1]
    assert last == 'written: ' + ', '.join(f'tour-out/{f}' for f in TOUR_OUTPUTS), out  # relative to where it ran: no machine paths
    assert str(d) not in out
    table = json.loads((d / 'tour-out' / 'table.json').read_text())
    assert table['settings']['family'] == 'internvl3_5' and len(table['rewards']) == 1
    assert table['rows'][-1]['dataset'] == 'macro average'
    for row in table['rows']: assert row['before']['n'] == row['after']['n'] == row['n'] > 0, row
    assert '| macro average |' in (d / 'tour-out' / 'table.md').read_text()
    for f in TOUR_OUTPUTS[2:]:
        with Image.open(d / 'tour-out' / f) as im: assert im.format == 'PNG' and min(im.size) >= 300, (f, im.size)
    assert (d / 'tour-out' / 'pipeline.yaml').is_file()

def _notes(d:Path): (d / 'notes.txt').write_text('not a folder')

def _sft_data(d:Path):
    "Eight synthetic grounding conversations of the tiny Qwen2.5-VL, a config for them and a config with a misnamed key."
    from vlmkit.family import FAMILIES
    from vlmkit.sft import synthetic_grounding
    fam = FAMILIES['qwen2_5_vl']
    _, processor = fam.tiny()
    (d / 'train.jsonl').write_text(''.join(c.to_json(image_dir=d / 'images') + '\n' for c in synthetic_grounding(fam, processor, 8)))
    (d / 'cfg.yaml').write_text('family: qwen2_5_vl\nmodel: tiny\ntrain: [train.jsonl]\noutput_dir: out\nbf16: false\n'
                                'report_to: none\nprogress: false\nbatch_tokens: 400\n')
    (d / 'bad.yaml').write_text('family: qwen2_5_vl\nlearning_rate: 1e-4\n')
    (d / 'noise.mp4').write_bytes(b'no video in here')          # `vlmkit chat --video`: a file no codec reads

def _sft_written(d:Path, out:str):
    assert out.splitlines()[-1] == 'adapter saved to out', out
    assert str(d) not in out
    assert {'adapter_model.safetensors', 'trainer_state.json', 'sft_config.yaml', 'skipped.jsonl'} <= {p.name for p in (d / 'out').iterdir()}

CASES = {
    'vlmkit': dict(
        setup=_sft_data, ok=(('sft', '--config', 'cfg.yaml', '--max-steps', '2'), _sft_written),
        bad=[(('sft', '--config', 'missing.yaml'), 'missing.yaml: file not found'),
             (('sft', '--config', 'bad.yaml'), "bad.yaml: unknown key 'learning_rate' (did you mean 'lr'?)"),
             (('sft', '--config', 'cfg.yaml', '--lr', 'fast'), "argument --lr: expected float, got 'fast'"),
             (('sft', '--config', 'cfg.yaml', '--train', 'nope.jsonl'), 'train: nope.jsonl: file not found'),
             (('sft', '--config', 'cfg.yaml', '--family', 'qwen'), "family: unknown family 'qwen'"),
             (('train',), 'the following arguments are required: --config'), (('serve',), "invalid choice: 'serve'"),
             (('chat', '--model', 'tiny:qwen2_5_vl', '--image', 'nope.png', '--prompt', 'Hi', '--device', 'cpu'), 'nope.png: image file not found'),
             (('chat', '--model', 'tiny:qwen2_5_vl', '--video', 'noise.mp4', '--prompt', 'Hi', '--device', 'cpu'), 'noise.mp4: cannot open as a video'),
             (('chat', '--model', 'tiny:qwen2_5_vl', '--prompt', 'word ' * 9000, '--device', 'cpu'), "longer than the model's context of 8192 tokens"),
             (('infer', '--model', 'tiny:qwen2_5_vl', '--data', 'nope.jsonl', '--out', 'r.jsonl', '--device', 'cpu'), 'nope.jsonl: data file not found'),
             (('tile', 'nope.png'), 'nope.png'), (('frames', 'missing.mp4', 'frames'), 'missing.mp4: file not found'),
             (('demo', '--model', 'tiny:nope'), "unknown family 'nope'"), (('demo', '--port', 'x'), "argument --port: invalid int value: 'x'")]),
    'vlmkit-save-frames': dict(
        setup=_clip, ok=(('clip.mp4', 'frames', '-n', '8'), _frames_written),
        bad=[(('missing.mp4', 'frames'), 'missing.mp4: file not found'),
             (('clip.mp4', 'frames', '-n', 'eight'), "argument -n/--num-segments: invalid int value: 'eight'"),
             (('clip.mp4', 'frames', '-n', '99'), 'asked for 99 frames but the video has only 30'),
             (('clip.mp4',), 'the following arguments are required: out_dir')]),
    'vlmkit-tour': dict(
        setup=_notes, ok=(('--out', 'tour-out', *TOUR_SHORT), _tour_written),
        bad=[(('--out', 'notes.txt'), 'notes.txt: exists and is not a folder'),
             (('--seed', 'x'), "argument --seed: invalid int value: 'x'"),
             (('--family', 'qwen'), "argument --family: invalid choice: 'qwen'"),
             (('--sft-steps', '0'), 'argument --sft-steps: must be 1 or more, got 0'),
             (('--bogus',), 'unrecognized arguments: --bogus')]),
}


def test_every_entry_point_has_cases():
    assert set(SCRIPTS) == set(CASES), f"add cases to tests/test_entry_points.py for {set(SCRIPTS) - set(CASES)}"
    assert FROM_THE_WHEEL <= set(SCRIPTS)


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict:
    "Every case of every script, each in a fresh folder; the scripts' drivers run two at a time."
    jobs = {}
    for script in sorted(set(SCRIPTS) & set(CASES)):
        case = CASES[script]
        ok = [] if script in FROM_THE_WHEEL else [('ok', case['ok'][0])]
        for key, args in ok + [('help', ('--help',))] + [(('bad', i), a) for i, (a, _) in enumerate(case['bad'])]:
            d = tmp_path_factory.mktemp(re.sub(r'\W', '_', f'{script}_{key}'))
            if key != 'help': case['setup'](d)
            jobs[script, key] = (d, sorted(p.name for p in d.iterdir()), args)
    scripts = sorted({s for s, _ in jobs})
    with ThreadPoolExecutor(2) as pool:
        futures = {s: pool.submit(run_cases, s, [(jobs[k][0], jobs[k][2]) for k in jobs if k[0] == s], tmp_path_factory.mktemp(f'{s}_driver'))
                   for s in scripts}
    results = {s: iter(f.result()) for s, f in futures.items()}
    return {k: (jobs[k][0], jobs[k][1], next(results[k[0]])) for k in jobs}


@pytest.mark.parametrize('script', sorted(set(SCRIPTS) - FROM_THE_WHEEL))
def test_success_exits_0_and_writes_what_it_says(script, runs):
    d, _, r = runs[script, 'ok']
    assert r.returncode == 0, r.stderr
    assert 'Traceback' not in r.stderr, r.stderr
    CASES[script]['ok'][1](d, r.stdout)


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_help_exits_0(script, runs):
    _, _, r = runs[script, 'help']
    assert (r.returncode, r.stderr) == (0, ''), r.stderr
    assert r.stdout.startswith(f'usage: {script} ')


@pytest.mark.parametrize('script, i', [(s, i) for s in sorted(SCRIPTS) for i in range(len(CASES.get(s, {}).get('bad', [])))])
def test_bad_input_exits_2_with_one_line(script, i, runs):
    d, before, r = runs[script, ('bad', i)]
    says = CASES[script]['bad'][i][1]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.endswith('\n') and r.stderr.count('\n') == 1, f"not one line: {r.stderr!r}"
    assert re.fullmatch(rf'{re.escape(script)}: error: .*{re.escape(says)}.*\n', r.stderr), r.stderr
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written
