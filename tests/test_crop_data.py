"""Acceptance of the crop-tool pipeline (vlmkit.crop_data): the golden run on the synthetic RefCOCO with a scripted
teacher; the same run through an OpenAI-compatible server on the loopback address; a SIGKILLed run and its rerun; the
fixer against the research samples' boxes; no output image in a val/test split."""
import base64, hashlib, json, os, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
from vlmkit.crop_data import (CROP_STAGES, crop_tool_data, demo_crop_script, filter_samples, fix_answer, read_stage,
                              refuse_eval_samples)
from vlmkit.refcoco import eval_image_ids, make_synthetic_refcoco
from vlmkit.teachers import OpenAITeacher, ScriptedTeacher, request_key
from vlmkit.testing import ChatServer, require_fixture

ROOT = Path(__file__).resolve().parents[1]

GOLDEN_SAMPLES = [
    ('2', 0, '<think>\nI will look at the square and the black triangle together. <tool_call>Crop [186.00, 113.00, 316.00, 212.00]</tool_call><image>\nThe black triangle sits just right of the square.\n</think>\n<answer>The black triangle.</answer>'),
    ('2', 1, '<think>\nLet me look at it closely. <tool_call>Crop [81.00, 110.00, 115.00, 214.00]</tool_call><image>\nIt is yellow.\n</think>\n<answer>Yellow.</answer>'),
    ('2', 2, '<think>\n<tool_call>Crop [81.00, 110.00, 115.00, 214.00]</tool_call><image> The left one is narrow. <tool_call>Crop [239.00, 113.00, 316.00, 212.00]</tool_call><image> The right one is wide. The left one again is narrow.\n</think>\n<answer>The right triangle is about twice as wide.</answer>'),
    ('3', 0, "<think>\nI'll check the hexagon first.\nBelow the circle there is a green shape. <tool_call>Crop [132.00, 141.00, 163.00, 231.00]</tool_call><image>\n</think>\n<answer>A green triangle.</answer>"),
    ('3', 2, '<think>\nCompare both. <tool_call>Crop [132.00, 141.00, 250.00, 231.00]</tool_call><image>\nThe blue one is wider.\n</think>\n<answer>The blue triangle.</answer>'),
    ('6', 0, '<think>\nLet me look closer. <tool_call>Crop [48.00, 49.00, 103.00, 131.00]</tool_call><image>\nA purple oval shape.\n</think>\n<answer>A purple ellipse.</answer>'),
]
GOLDEN_DROPS = [('2', 'fix', 'duplicate_call', 2), ('3', 'fix', 'unknown_object', 0), ('3', 'filter', 'missing_answer_tag', 1),
                ('5', 'filter', 'easy_question', 0), ('5', 'filter', 'mentions_without_call', 1), ('5', 'filter', 'no_crop_call', 2)]
GOLDEN_STAGES = {
    'merge': {'stage': 'merge', 'sentences': 134, 'images_seen': 8, 'images': 4, 'objects': 12, 'duplicates_merged': 24, 'refused_eval_images': 4,
              'refused': {'1': ['refcocog/test'], '4': ['refcoco+/testB', 'refcoco/testB', 'refcocog/test'],
                          '7': ['refcoco+/val', 'refcoco/val', 'refcocog/val'], '8': ['refcoco+/testA', 'refcoco/testA', 'refcocog/val']}},
    'generate': {'stage': 'generate', 'images': 4, 'qa': 10, 'drops': {}, 'failed': []},
    'repair': {'stage': 'repair', 'images': 4, 'qa': 10, 'drops': {}, 'failed': [], 'repairs': {'rule': 1, 'teacher': 1}},
    'fix': {'stage': 'fix', 'images': 4, 'qa': 10, 'drops': {'duplicate_call': 1, 'unknown_object': 1}, 'failed': []},
    'convert': {'stage': 'convert', 'images': 4, 'samples': 10, 'drops': {}, 'failed': []},
    'filter': {'stage': 'filter', 'images': 4, 'samples': 6, 'drops': {'easy_question': 1, 'mentions_without_call': 1, 'missing_answer_tag': 1, 'no_crop_call': 1}, 'failed': []},
}
GOLDEN_FRACTIONS_BEFORE = {'without_crop': 0.2, 'mentions_without_call': 0.1, 'easy': 0.1, 'missing_answer_tag': 0.1, 'answers_over_500_chars': 0.0}


@pytest.fixture(scope='module')
def refcoco(tmp_path_factory):
    return make_synthetic_refcoco(tmp_path_factory.mktemp('refcoco'), n_images=8)

@pytest.fixture(scope='module')
def golden(refcoco, tmp_path_factory):
    out = tmp_path_factory.mktemp('golden')
    teacher = ScriptedTeacher(demo_crop_script())
    return out, crop_tool_data(refcoco, out, teacher, plot=False), teacher


def _samples(out): return [(s['image_id'], s['qa'], s['conversations'][2]['value']) for s in json.loads((out/'samples.json').read_text())]
def _drops(out): return [(r['id'], dr['stage'], dr['code'], dr['qa']) for r in read_stage(out, 'filter') for dr in r['drops']]


def test_golden_run(golden):
    out, report, teacher = golden
    assert _samples(out) == GOLDEN_SAMPLES
    assert _drops(out) == GOLDEN_DROPS
    assert report['stages'] == GOLDEN_STAGES
    assert (report['quality_before_filter']['score'], report['quality_before_filter']['fractions']) == (89.5, GOLDEN_FRACTIONS_BEFORE)
    assert (report['quality']['score'], report['quality']['samples'], report['quality']['images']) == (100.0, 6, 3)
    assert sorted(p.key for p in teacher.prompts) == ['qa:2', 'qa:3', 'qa:5', 'qa:6', 'repair:3']
    assert all((out/f"{i}_{s}.report.json").is_file() for i, s in enumerate(CROP_STAGES, 1))


def _responder(refcoco):
    "The scripted teacher behind the server: the image by its bytes' hash, the prompt's kind by its first words."
    by_hash = {hashlib.sha256(p.read_bytes()).hexdigest(): str(int(p.stem.rsplit('_', 1)[-1])) for p in (refcoco/'images'/'train2014').glob('*.jpg')}
    script = demo_crop_script()
    def respond(body):
        content = body['messages'][-1]['content']
        url, text = content[0]['image_url']['url'], content[-1]['text']
        image = by_hash[hashlib.sha256(base64.b64decode(url.split(',', 1)[1])).hexdigest()]
        kind = 'qa' if text.startswith('You write training questions') else 'repair'
        return script[f"{kind}:{image}"]
    return respond

def _run(refcoco, out, url) -> list:
    "The command of a run against `url` in a fresh interpreter (the library alone: a second's start, not the CLI's ten)."
    code = ("import sys; from vlmkit.crop_data import crop_tool_data; from vlmkit.teachers import OpenAITeacher; "
            "crop_tool_data(sys.argv[1], sys.argv[2], OpenAITeacher(sys.argv[3], 'scripted', cache=sys.argv[2] + '/requests', concurrency=1), "
            "batch_size=1, plot=False)")
    return [sys.executable, '-c', code, str(refcoco), str(out), url]

def _env(): return {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}


def test_server_run_equals_golden(refcoco, golden, tmp_path):
    with ChatServer(_responder(refcoco)) as srv:
        teacher = OpenAITeacher(srv.url, 'scripted', cache=tmp_path/'requests', concurrency=2)
        report = crop_tool_data(refcoco, tmp_path, teacher, batch_size=1, plot=False)
        assert (srv.requests, dict(teacher.stats)) == (5, {'sent': 5})
    assert (tmp_path/'samples.json').read_bytes() == (golden[0]/'samples.json').read_bytes()
    assert _drops(tmp_path) == GOLDEN_DROPS
    assert (report['stages'], report['quality']) == (golden[1]['stages'], golden[1]['quality'])


def _key(body):
    "The cache key of a request the server received (images hashed as the client hashes them)."
    keyed = json.loads(json.dumps(body['messages']))
    for m in keyed:
        for part in m['content'] if isinstance(m['content'], list) else []:
            if part.get('type') == 'image_url':
                part['image_url']['url'] = 'sha256:' + hashlib.sha256(base64.b64decode(part['image_url']['url'].split(',', 1)[1])).hexdigest()
    return request_key(body['model'], keyed, {k: v for k, v in body.items() if k not in ('model', 'messages')})


def test_killed_run_reruns_only_what_is_missing(refcoco, golden, tmp_path):
    with ChatServer(_responder(refcoco), delay=0.25) as srv:
        p = subprocess.Popen(_run(refcoco, tmp_path, srv.url), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while srv.requests < 3 and time.time() - t0 < 60 and p.poll() is None: time.sleep(0.02)
        p.send_signal(signal.SIGKILL); p.wait()
        before, cached = srv.requests, {f.stem for f in (tmp_path/'requests').glob('*/*.json')}
        done = len((tmp_path/'2_generate.jsonl').read_text().splitlines()) if (tmp_path/'2_generate.jsonl').exists() else 0
        assert 2 <= before < 5 and len(cached) >= 2 and done < 4          # killed mid-run, with answers cached
        r = subprocess.run(_run(refcoco, tmp_path, srv.url), env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rerun = [_key(b) for b in srv.bodies[before:]]
    assert not set(rerun) & cached                                       # nothing answered before the kill is asked again
    assert len(rerun) == len(set(rerun)) and len(cached | set(rerun)) == 5
    assert (tmp_path/'samples.json').read_bytes() == (golden[0]/'samples.json').read_bytes()
    for i, s in enumerate(CROP_STAGES, 1):                               # one record per image in every stage file
        ids = [json.loads(l)['id'] for l in (tmp_path/f"{i}_{s}.jsonl").read_text().splitlines()]
        assert sorted(ids) == ['2', '3', '5', '6'], (s, ids)


def test_fixer_boxes_equal_the_research_annotation_boxes():
    path = require_fixture('seed/refcoco/refcoco_qa_pairs_sample.jsonl')
    calls = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for qa in rec['QnA']:
            for m in re.finditer(r'\{Crop ([^\[\]{}]+?) \[([^\]]+)\]\}', qa['A3']):
                calls.setdefault(rec['image_id'], []).append(([n.strip() for n in m[1].split(',')], [float(v) for v in m[2].split(',')]))
    checked, unions = 0, 0
    for image, found in calls.items():
        ann = {}
        for names, box in found:
            if len(names) == 1: assert ann.setdefault(names[0], box) == box, (image, names)   # one object, one annotation box
        objects = [{'name': n, 'category': n.rsplit(' ', 1)[0], 'box': b} for n, b in ann.items()]
        size = (max(640, max(b[2] for b in ann.values())), max(480, max(b[3] for b in ann.values())))
        for names, box in found:
            if not all(n in ann for n in names): continue
            text, fixed, drops = fix_answer('{Crop ' + ', '.join(names) + '}', objects, size)
            assert not drops and fixed[0]['box'] == box, (image, names, fixed, box)
            assert fixed[0]['box'] != [0, 0, size[0], size[1]]
            checked += 1; unions += len(names) > 1
        text, fixed, drops = fix_answer('{Crop the tennis net}', objects, size)
        assert fixed == [] and drops[0]['code'] == 'unknown_object'
    assert checked >= 40 and unions >= 5, (checked, unions)


def test_no_output_image_in_an_eval_split(refcoco, golden):
    ev = eval_image_ids(refcoco)
    samples = json.loads((golden[0]/'samples.json').read_text())
    assert samples and not refuse_eval_samples(samples, ev)[1]
    base = samples[0]
    prefixed = [{**base, 'image': p, 'qa': i} for i, p in enumerate(['train2014/COCO_train2014_000000000004.jpg', 'coco/train2017/000000000007.jpg',
                                                                     'train2017/000000000008.jpg', 'images/COCO_val2014_000000000001.jpg'])]
    recs, _ = filter_samples([{'id': 'x', 'samples': prefixed + [base], 'drops': []}], ev)
    assert [s['image'] for s in recs[0]['samples']] == [base['image']]
    assert [d['code'] for d in recs[0]['drops']] == ['eval_split_image'] * 4
