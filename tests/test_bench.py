"""Every benchmark in bench/ runs in its `--tiny` CPU mode (the same code path as on the device, tiny shapes and counts)
and prints its table, so that a benchmark cannot break unnoticed between device runs. The scripts are found by listing
bench/*.py: a new benchmark is tested without being named here."""
import json, re, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from forked import run_forked, script_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT/'bench').glob('*.py'))
CHECKED_BELOW = {'sft_gpu'}   # run --tiny by a test of its own below, which checks its table too
ROW = re.compile(r'^\|.*\|\s*$')
RULE = re.compile(r'^\|(?:\s*:?-{3,}:?\s*\|)+\s*$')  # a markdown table's header rule: |---|---:|...
TIMEOUT = 300

def test_there_are_benchmarks(): assert len(SCRIPTS) >= 4, SCRIPTS

def check_table(name:str, text:str):
    "`text` (a script's output) holds a markdown table: a header row, its rule, and rows of the header's width."
    lines = text.splitlines()
    rules = [i for i, l in enumerate(lines) if RULE.match(l)]
    assert rules, f"{name} --tiny printed no table:\n{text[-2000:]}"
    i = rules[0]
    assert i > 0 and ROW.match(lines[i - 1]), f"{name}: table without a header row"
    body = []
    for l in lines[i + 1:]:
        if not ROW.match(l): break
        body.append(l)
    assert body, f"{name}: table without rows"
    cells = lambda l: len(l.strip().strip('|').split('|'))
    assert all(cells(l) == cells(lines[i - 1]) for l in body), f"{name}: rows and header differ in columns"

@pytest.mark.parametrize('script', [s for s in SCRIPTS if s.stem not in CHECKED_BELOW], ids=lambda p: p.stem)
def test_tiny_run_prints_its_table(script):
    assert '--tiny' in script.read_text().split('"""')[1], f"{script.name}: its docstring does not mention --tiny"
    # in a process forked from this one (tests/forked.py), on one OpenMP thread: on a shared CPU, threads that find no
    # free core slow every op of a smoke test many times over
    r = run_forked(script_main(script), ['--tiny'], cwd=ROOT, timeout=TIMEOUT, prog=str(script))
    text = r.stdout
    assert r.returncode == 0, f"{script.name} --tiny exited with {r.returncode}:\n{(r.stdout + r.stderr)[-4000:]}"
    check_table(script.name, text)

def test_sft_bench_tiny_rows_agree(tmp_path):
    "bench/sft_gpu.py --tiny: each family has its plain and vlmkit rows (both vlmkit losses, kept and offloaded), none failed, every loss sum that of one at a time."
    out = tmp_path/'sft.json'
    script = ROOT/'bench'/'sft_gpu.py'
    r = run_forked(script_main(script), ['--tiny', '--vlmkit-loss', 'both', '--offload', '--json', out], cwd=ROOT, timeout=TIMEOUT, prog=str(script))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    check_table('sft_gpu.py', r.stdout)
    results = json.loads(out.read_text())['results']
    assert [f['family'] for f in results] == ['internvl3_5', 'qwen2_5_vl', 'ovis2_5']
    for f in results:
        assert [row['mode'] for row in f['rows']] == ['plain, one at a time', 'plain, padded batches of 4', 'vlmkit packed 2x',
                                                      "vlmkit packed 2x, model's loss", 'vlmkit packed 2x, offloaded',
                                                      "vlmkit packed 2x, model's loss, offloaded"], f
        first = f['rows'][0]['loss_sum']
        for row in f['rows']: assert abs(row['loss_sum'] - first) <= 1e-3 * abs(first), (f['family'], row)

def test_kernel_sweep_tiny_runs_every_tuning(tmp_path):
    """bench/decode_attention_gpu.py --tiny --kernel-sweep: every tuning of the Triton decode kernel runs under Triton's
    interpreter and gives the fused-kernel path's attention. A fresh process: the interpreter must be chosen before Triton is imported."""
    import importlib.util, os, subprocess
    if importlib.util.find_spec('triton') is None: pytest.skip('Triton is not installed')
    out = tmp_path / 'sweep.json'
    r = subprocess.run([sys.executable, 'bench/decode_attention_gpu.py', '--tiny', '--kernel-sweep', '--json', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    check_table('decode_attention_gpu.py --kernel-sweep', r.stdout)
    rows = [l for l in r.stdout.splitlines() if l.startswith('| shared_decode_partials')]
    assert len(rows) == 8 and not any('failed' in l for l in rows), r.stdout[-3000:]
    assert all(float(l.strip().strip('|').split('|')[-1]) < 3e-2 for l in rows), r.stdout[-3000:]   # bf16 inputs: within bf16's rounding
    swept = json.loads(out.read_text())
    fastest = min(swept['rows'], key=lambda row: row['us'])
    assert swept['fastest'] == {'64': {k: fastest[k] for k in swept['fastest']['64']}}, swept['fastest']
    from vlmkit.attention import DECODE_TUNING
    assert set(swept['fastest']['64']) == set(DECODE_TUNING)      # what --decode-tuning of grpo_rollout_gpu.py takes

def test_grpo_reference_ways_side_by_side(tmp_path):
    """bench/grpo_rollout_gpu.py --tiny: the reference part's --plain rows and one vlmkit row a way of compiling (--inductor),
    each with its greedy check against transformers' greedy generate."""
    out = tmp_path/'reference.json'
    script = ROOT/'bench'/'grpo_rollout_gpu.py'
    r = run_forked(script_main(script), ['--tiny', '--parts', 'reference', '--plain', 'batch', '--caches', 'static', '--inductor', 'default',
                                         'coordinate_descent_tuning=True', '--json', out], cwd=ROOT, timeout=TIMEOUT, prog=str(script))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rows = json.loads(out.read_text())['results']['reference']
    assert [row['mode'] for row in rows] == ['transformers generate, 2 x G=2', 'vlmkit generate, 2 x G=2, static cache',
                                             'vlmkit generate, 2 x G=2, static cache, Inductor coordinate_descent_tuning=True'], rows
    assert all(row['same_greedy_float32'] == 4 for row in rows[1:]), rows

def test_grpo_reference_fused_projections_side_by_side(tmp_path):
    """bench/grpo_rollout_gpu.py --tiny --fuse-projections both: the reference part's compiled vlmkit rows without and with
    fused projections (Inductor's C++ backend on a CPU), each with its greedy check."""
    out = tmp_path/'fused.json'
    script = ROOT/'bench'/'grpo_rollout_gpu.py'
    r = run_forked(script_main(script), ['--tiny', '--parts', 'reference', '--plain', 'none', '--caches', 'compiled', '--fuse-projections', 'both',
                                         '--json', out], cwd=ROOT, timeout=TIMEOUT, prog=str(script))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rows = json.loads(out.read_text())['results']['reference']
    assert [row['mode'] for row in rows] == ['vlmkit generate, 2 x G=2, compiled cache', 'vlmkit generate, 2 x G=2, compiled cache, fused projections'], rows
    assert all(row['same_greedy_float32'] == 4 for row in rows), rows
