"""Batch inference survives being killed: a `vlmkit.infer.infer` run SIGKILLed mid-way (a process of its own, after some
batches are written) and then rerun leaves the same results file, byte for byte, as an uninterrupted run."""
import json, signal, sys, time
from pathlib import Path
from vlmkit.conversation import Conversation, ImageRef, Text, Turn
from vlmkit.images import synthetic_image

sys.path.insert(0, str(Path(__file__).parent))
from forked import Forked  # noqa: E402

def _run():
    "`vlmkit.infer.infer` of the tiny Qwen2.5-VL on `sys.argv[1]` into `sys.argv[2]`, two conversations a batch."
    from vlmkit.grounding import load_model
    from vlmkit.infer import infer
    _, model, processor = load_model('tiny:qwen2_5_vl', device='cpu')
    infer(model, processor, sys.argv[1], sys.argv[2], batch_size=2, max_new_tokens=8, progress=False)

def _data(d:Path, n:int=8) -> Path:
    lines = []
    for k in range(n):
        img, _ = synthetic_image(k, (96, 64)); img.save(d / f'img{k}.png')
        rec = Conversation([Turn('user', [ImageRef(f'img{k}.png'), Text(f'What is in image {k}?')])]).to_dict()
        lines.append(json.dumps(rec | {'id': f's{k}'}))
    lines.insert(5, json.dumps({'id': 'bad', 'messages': [{'role': 'user', 'content': [{'type': 'image', 'image': 'gone.png'}]}]}))
    (d / 'data.jsonl').write_text('\n'.join(lines) + '\n')
    return d / 'data.jsonl'

def _start(data:Path, out:Path) -> Forked:
    "`_run` in a process forked from this one (tests/forked.py)."
    return Forked(_run, [data, out], prog='infer')

def _lines(p:Path) -> int: return p.read_bytes().count(b'\n') if p.exists() else 0

def test_killed_then_rerun_gives_the_uninterrupted_file(tmp_path, capsys):
    data = _data(tmp_path)
    whole, killed = tmp_path / 'whole.jsonl', tmp_path / 'killed.jsonl'
    part = _start(data, killed)
    deadline = time.time() + 120
    while _lines(killed) < 2 and part.poll() is None and time.time() < deadline: time.sleep(0.02)
    part.kill()
    assert part.wait() == -signal.SIGKILL
    n_before = _lines(killed)
    assert 0 < n_before < 9, n_before              # killed mid-way: some records written, not all
    from vlmkit.grounding import load_model
    from vlmkit.infer import infer
    _, model, processor = load_model('tiny:qwen2_5_vl', device='cpu')
    infer(model, processor, data, whole, batch_size=2, max_new_tokens=8, progress=False)   # the uninterrupted run, here
    rerun = _start(data, killed)
    assert rerun.wait(timeout=300) == 0, rerun.output()[1]
    assert killed.read_bytes() == whole.read_bytes()
    recs = [json.loads(l) for l in whole.read_text().splitlines()]
    assert [r['id'] for r in recs] == [f's{k}' for k in range(5)] + ['bad'] + [f's{k}' for k in range(5, 8)]
    assert 'gone.png: image file not found' in recs[5]['error']
    assert "id 'bad' skipped" in capsys.readouterr().err
