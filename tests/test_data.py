"""vlmkit.data beyond the notebook: every reader on synthetic files with one bad record of each kind (each reported
with its file and line while the good ones load), broken JSON documents, registries, a format registered from
outside, splits that never share an image whatever the paths (hypothesis), readers that never raise on garbage
lines, and the research repo's seed files where ../shared/fixtures is present."""
import json, os, random
from dataclasses import replace
from pathlib import Path
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from vlmkit.conversation import Conversation, ImageRef, Turn, VideoRef
from vlmkit.data import (FORMATS, DataError, Format, canonical_image_id, data_stats, image_ids, read_conversations, read_mixture,
                         register_format, shared_images, split_conversations, token_lengths, write_conversations)
from vlmkit.images import synthetic_image
from vlmkit.testing import noise_image, require_fixture

some = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture
def folder(tmp_path):
    "A data folder with three images: img/shapes.png (320x240), img/noise.png (64x48), img/tall.png (48x64)."
    (tmp_path/'img').mkdir()
    synthetic_image(0, (320, 240))[0].save(tmp_path/'img'/'shapes.png')
    noise_image(1, (64, 48)).save(tmp_path/'img'/'noise.png')
    noise_image(2, (48, 64)).save(tmp_path/'img'/'tall.png')
    return tmp_path

def where(report) -> list:
    return [(Path(p.file).name, p.line, p.kind) for p in report]


# --- one bad record of each kind, per format ------------------------------------------------------------------

def test_vlmkit_jsonl_good_load_and_each_bad_one_is_reported(folder):
    good = Conversation([('user', [ImageRef('img/shapes.png', boxes=[[10, 10, 100, 90]]), 'Where?']), ('assistant', 'There.')])
    q = lambda ref: replace(good, turns=(Turn('user', [ref, 'Q']), good.turns[1]))
    lines = [good.to_json(),
             good.to_json()[:40],                                                     # 2: truncated
             q(ImageRef('img/missing.png')).to_json(),                                # 3: missing image
             q(ImageRef('img/noise.png', boxes=[[0, 0, 65, 10]])).to_json(),          # 4: box outside the 64x48 image
             Conversation([('user', [ImageRef('img/tall.png'), 'Q'])]).to_json(),     # 5: no answer
             '',                                                                      # blank: no record
             q(ImageRef('img/tall.png', region=(0, 0, 48, 64))).to_json()]            # 7: good (a region inside)
    (folder/'train.jsonl').write_text('\n'.join(lines))                               # no newline after the last line
    convs, report = read_conversations(folder/'train.jsonl')
    assert [c.meta['line'] for c in convs] == [1, 7]
    assert where(report) == [('train.jsonl', 2, 'json'), ('train.jsonl', 3, 'image'), ('train.jsonl', 4, 'box'), ('train.jsonl', 5, 'answer')]
    assert 'missing.png: file not found' in report.problems[1].reason and 'x2=65 outside [0, 64]' in report.problems[2].reason
    assert (report.records, report.loaded) == (6, 2)
    assert convs[0].images[0].item.size == (320, 240) and convs[0].images[0].item.src == str(folder/'img'/'shapes.png')
    with pytest.raises(DataError, match='train.jsonl:2: json'): report.raise_if_any()
    assert 'train.jsonl:5: answer' in str(report)

def test_ovis_qna_jsonl(folder):
    recs = [{'image_path': 'img/noise.png', 'image_id': '7', 'QnA': [{'Q': 'What?', 'A3': 'Noise.'}, {'Q': 'Sure?', 'A3': 'Yes.'}]},
            {'image_path': 'img/nope.png', 'QnA': [{'Q': 'What?', 'A3': 'x'}]},
            {'image_path': 'img/noise.png', 'QnA': [{'Q': 'What?', 'A1': 'Noise.'}]},
            {'image': 'img/noise.png', 'QnA': [{'Q': 'What?', 'A3': 'x'}]},
            {'image_path': 'img/noise.png', 'QnA': [{'Q': '<image>\nWhat?', 'A3': 'x'}]}]
    (folder/'qna.jsonl').write_text('\n'.join(json.dumps(r) for r in recs) + '\n{"image_path": "img/noise.png", "QnA": [{"Q": "Wh')
    convs, report = read_conversations(folder/'qna.jsonl')
    assert len(convs) == 1 and [t.role for t in convs[0].turns] == ['user', 'assistant'] * 2
    assert convs[0].meta['fields'] == {'image_id': '7'} and convs[0].meta['format'] == 'ovis_qna'
    assert where(report) == [('qna.jsonl', 2, 'image'), ('qna.jsonl', 3, 'answer'), ('qna.jsonl', 4, 'keys'),
                             ('qna.jsonl', 5, 'placeholder'), ('qna.jsonl', 6, 'json')]
    assert "QnA[0].A3: no answer: no 'A3' (keys: ['A1', 'Q'])" in report.problems[1].reason
    assert "['image'] hold content the ovis_qna format does not read" in report.problems[2].reason
    convs, report = read_conversations(folder/'qna.jsonl', answer_key='A1')      # a reader option
    assert [c.meta['line'] for c in convs] == [3]

def test_llava_json_array_and_its_keys(folder):
    recs = [{'image': 'img/noise.png', 'conversations': [{'from': 'human', 'value': '<image>\nQ'}, {'from': 'gpt', 'value': 'A'}]},
            {'images': ['img/noise.png', 'img/tall.png'], 'conversations': [{'from': 'human', 'value': '<image> and <image>'}, {'from': 'gpt', 'value': 'A'}]},
            {'image': 'img/noise.png', 'images': ['img/tall.png'], 'conversations': [{'from': 'human', 'value': '<image>'}, {'from': 'gpt', 'value': 'A'}]},
            {'image': ['img/noise.png'], 'conversations': [{'from': 'human', 'value': '<image> <image>'}, {'from': 'gpt', 'value': 'A'}]},
            {'conversations': [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': ''}]},
            {'system': 'Be brief.', 'conversations': [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': 'A'}]},
            {'video_frames': ['img/noise.png', 'img/gone.png'], 'conversations': [{'from': 'human', 'value': '<video>Q'}, {'from': 'gpt', 'value': 'A'}]},
            {'video': ['img/noise.png', 'img/tall.png'], 'fps': 2, 'conversations': [{'from': 'human', 'value': '<video>Q'}, {'from': 'gpt', 'value': 'A'}]},
            {'audio': 'a.wav', 'conversations': [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': 'A'}]},
            {'conversations': [{'from': 'bot', 'value': 'Q'}]},
            {'caption': 'no format reads this'},
            [1, 2]]
    (folder/'data.json').write_text(json.dumps(recs, indent=1))
    convs, report = read_conversations(folder/'data.json')
    assert [c.meta['record'] for c in convs] == [0, 1, 5, 7]
    assert convs[2].system == 'Be brief.' and convs[3].videos[0].item.fps == 2.0 and len(convs[3].videos[0].item.src) == 2
    assert [(p.record, p.kind) for p in report] == [(2, 'keys'), (3, 'placeholder'), (4, 'answer'), (6, 'image'), (8, 'keys'),
                                                   (9, 'conversation'), (10, 'format'), (11, 'format')]
    text = (folder/'data.json').read_text().splitlines()
    for p in report: assert text[p.line - 1].strip() in ('{', '['), p           # each line is where its record starts
    assert 'gone.png: file not found' in report.problems[3].reason

def test_image_root_and_absolute_paths(folder):
    (folder/'sub').mkdir()
    rec = {'images': ['img/noise.png', str(folder/'img'/'tall.png')], 'conversations': [{'from': 'human', 'value': '<image><image>Q'}, {'from': 'gpt', 'value': 'A'}]}
    (folder/'sub'/'d.jsonl').write_text(json.dumps(rec) + '\n')
    _, report = read_conversations(folder/'sub'/'d.jsonl')                # relative to sub/: not there
    assert where(report) == [('d.jsonl', 1, 'image')]
    convs, report = read_conversations(folder/'sub'/'d.jsonl', image_root=folder)
    assert len(report) == 0 and [p.item.src for p in convs[0].images] == [str(folder/'img'/'noise.png'), str(folder/'img'/'tall.png')]


# --- broken documents -------------------------------------------------------------------------------------------

def test_truncated_json_array_loads_what_comes_before(folder):
    recs = [{'conversations': [{'from': 'human', 'value': f'Q{i}'}, {'from': 'gpt', 'value': 'A'}]} for i in range(4)]
    text = json.dumps(recs, indent=1)
    (folder/'cut.json').write_text(text[:text.index('Q2') + 5])
    convs, report = read_conversations(folder/'cut.json')
    assert len(convs) == 2 and [(p.record, p.kind) for p in report] == [(2, 'json')]
    assert 'records after it are not read' in report.problems[0].reason
    (folder/'wrapped.json').write_text(json.dumps({'version': 2, 'tags': ['a'], 'conversations': recs}, indent=1)[:-30])
    convs, report = read_conversations(folder/'wrapped.json')
    assert len(convs) == 3 and report.problems[0].record == 'conversations[3]'

def test_bytes_that_are_not_utf8_cost_one_line(folder):
    ok = json.dumps({'conversations': [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': 'A'}]}).encode()
    (folder/'b.jsonl').write_bytes(b'\xef\xbb\xbf' + ok + b'\n' + ok[:-5] + b'\xff"}]}\n' + ok + b'\n')
    convs, report = read_conversations(folder/'b.jsonl')
    assert [c.meta['line'] for c in convs] == [1, 3] and where(report) == [('b.jsonl', 2, 'json')]
    assert 'not UTF-8' in report.problems[0].reason

def test_a_json_file_of_lines_is_read_as_jsonl(folder):
    ok = json.dumps({'conversations': [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': 'A'}]})
    (folder/'lines.json').write_text(ok + '\n' + ok + '\n')
    convs, report = read_conversations(folder/'lines.json')
    assert [c.meta['line'] for c in convs] == [1, 2] and len(report) == 0

def test_missing_empty_and_foreign_files(folder):
    (folder/'empty.json').write_text('  \n')
    (folder/'csv.json').write_text('a,b\n1,2\n')
    convs, report = read_conversations([folder/'nope.jsonl', folder/'empty.json', folder/'csv.json', folder])
    assert convs == [] and [p.kind for p in report] == ['file', 'file', 'json', 'file']
    assert 'a folder' in report.problems[3].reason
    with pytest.raises(KeyError, match="unknown format 'nope'"): read_conversations(folder/'empty.json', format='nope')

def test_deep_nesting_and_failing_checks_cost_one_record(folder):
    ok = json.dumps({'conversations': [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': 'A'}]})
    (folder/'deep.jsonl').write_text(ok + '\n' + '[' * 100_000 + '\n' + ok + '\n')
    def no_third(c):
        if c.meta['line'] == 3: raise RuntimeError('check bug')
    convs, report = read_conversations(folder/'deep.jsonl', checks=[no_third])
    assert [c.meta['line'] for c in convs] == [1] and where(report) == [('deep.jsonl', 2, 'json'), ('deep.jsonl', 3, 'conversation')]
    assert 'nested too deeply' in report.problems[0].reason and 'check no_third failed: RuntimeError: check bug' in report.problems[1].reason
    (folder/'deep.json').write_text('[' + ok + ',\n' + '[' * 100_000 + ']')
    convs, report = read_conversations(folder/'deep.json')
    assert len(convs) == 1 and where(report) == [('deep.json', 2, 'json')]

line_text = st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode('latin-1')),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(['conversations', 'messages', 'QnA', 'image', 'image_path', 'from', 'value', 'role', 'content', 'Q', 'A3', 'x']), c, max_size=4),
                                   max_leaves=12).map(json.dumps))

@some
@given(st.lists(line_text, max_size=12))
def test_garbage_never_raises_and_every_record_is_counted(tmp_path, lines):
    "Whatever the lines hold, reading returns; each non-blank line is loaded or reported."
    p = tmp_path/'g.jsonl'
    p.write_text('\n'.join(l.replace('\n', ' ').replace('\r', ' ') for l in lines), encoding='utf-8', errors='surrogatepass')
    convs, report = read_conversations(p)
    n = sum(1 for l in p.read_bytes().split(b'\n') if l.strip())
    assert report.records == n and len(convs) == report.loaded and len(report) == n - len(convs)


# --- registries -------------------------------------------------------------------------------------------------

def test_registry_ratios_counts_and_path_map(folder):
    rec = lambda i: {'image': 'noise.png', 'conversations': [{'from': 'human', 'value': f'<image>Q{i}'}, {'from': 'gpt', 'value': 'A'}]}
    (folder/'a.json').write_text(json.dumps([rec(i) for i in range(10)]))
    reg = {'a': {'meta_file': '/far/away/a.json', 'image_dir': '/far/away/img', 'sampling_ratio': 0.3},
           'b': {'annotation': 'a.json', 'root': 'img', 'repeat_time': 3, 'length': 11},
           'c': {'meta_file': 'a.json', 'data_format': 'caption'}}
    (folder/'reg.json').write_text(json.dumps(reg, indent=2))
    mix, report = read_mixture(folder/'reg.json', path_map={'/far/away': folder})
    assert [(s.name, s.loaded, s.drawn) for s in mix.sources] == [('a', 10, 3), ('b', 10, 30)]
    assert [(p.record, p.line, p.kind) for p in report] == [('b', 7, 'registry'), ('c', 13, 'registry')]
    assert 'declares length 11' in report.problems[0].reason and "format 'caption' has no reader" in report.problems[1].reason
    again, _ = read_mixture(folder/'reg.json', path_map={'/far/away': folder})
    assert [c.meta['record'] for c in again.conversations] == [c.meta['record'] for c in mix.conversations]
    other, _ = read_mixture(folder/'reg.json', path_map={'/far/away': folder}, seed=1)
    assert {c.meta['record'] for c in other.conversations if c.meta['dataset'] == 'a'} != \
           {c.meta['record'] for c in mix.conversations if c.meta['dataset'] == 'a'}   # another seed, another third
    only, _ = read_mixture(folder/'reg.json', names='b')
    assert [s.name for s in only.sources] == ['b']
    with pytest.raises(KeyError, match=r"no source named \['z'\]"): read_mixture(folder/'reg.json', names=['z'])


# --- formats from outside -----------------------------------------------------------------------------------------

@pytest.fixture
def caption_format():
    read = lambda rec, ctx: Conversation([('user', [ImageRef(ctx.path(rec['img'])), 'Describe.']), ('assistant', rec['caption'])])
    fmt = register_format(Format('caption_test', lambda r: 'caption' in r, read, ('img', 'caption'), about='img + caption'))
    register_format(Format('llava_shout', lambda r: 'conversations' in r and r.get('shout'), lambda rec, ctx: FORMATS['llava'].read(rec, ctx),
                                     ('conversations', 'shout'), priority=5))
    yield fmt
    del FORMATS['caption_test'], FORMATS['llava_shout']

def test_a_registered_format_reads_and_a_higher_priority_claims_first(folder, caption_format):
    conv = [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': 'A'}]
    lines = [{'img': 'img/noise.png', 'caption': 'Grey.'}, {'conversations': conv, 'shout': True}, {'conversations': conv},
             {'img': 'img/noise.png'}]
    (folder/'mixed.jsonl').write_text('\n'.join(map(json.dumps, lines)))
    convs, report = read_conversations(folder/'mixed.jsonl')
    assert [c.meta['format'] for c in convs] == ['caption_test', 'llava_shout', 'llava']
    assert where(report) == [('mixed.jsonl', 4, 'format')] and 'caption_test (img + caption)' in report.problems[0].reason
    _, report = read_conversations(folder/'mixed.jsonl', format='caption_test')
    assert [p.line for p in report] == [2, 3, 4]

def test_a_failing_reader_is_reported_not_raised(folder):
    def boom(rec, ctx): raise RuntimeError('reader bug')
    register_format(Format('boom_test', lambda r: 'boom' in r, boom, None))
    try:
        (folder/'boom.jsonl').write_text('{"boom": 1}\n')
        convs, report = read_conversations(folder/'boom.jsonl')
        assert convs == [] and str(report.problems[0]).endswith('format: the boom_test reader failed: RuntimeError: reader bug')
    finally: del FORMATS['boom_test']


# --- splits -----------------------------------------------------------------------------------------------------

def test_canonical_ids():
    assert canonical_image_id('/mnt/nas1/data/coco/train2017/000000123456.jpg') == canonical_image_id('COCO_val2014_000000123456.png') == '123456'
    assert canonical_image_id('x/Dog.JPEG') == canonical_image_id('y/z/dog.png') == 'dog'
    assert canonical_image_id('a/1.jpg') != canonical_image_id('a/2.jpg')
    v = Conversation([('user', [VideoRef(('f/f1.jpg', 'f/f2.jpg')), ImageRef('x/COCO_train2014_000000000001.jpg'), 'Q'])])
    assert image_ids(v) == {'f1', 'f2', '1'}

def variants(name:str, rng:random.Random) -> str:
    "`name` (a COCO id or a word) under a random root, folder and extension, as datasets write it."
    root = rng.choice(['', '/mnt/nas1/data/', 'data/', './'])
    if name.isdigit():
        return root + rng.choice([f"coco/train2017/{int(name):012d}.jpg", f"train2014/COCO_train2014_{int(name):012d}.jpg",
                                  f"val2014/COCO_val2014_{int(name):012d}.png", f"coco/{int(name):012d}.jpeg"])
    return root + rng.choice(['', 'images/', 'a/b/']) + name + rng.choice(['.jpg', '.png', '.JPG'])

@some
@given(st.lists(st.lists(st.sampled_from(['1', '42', '123456', '477580', 'cat', 'dog', 'fox', 'owl', 'bee', 'ant']), min_size=0, max_size=3), min_size=1, max_size=40),
       st.integers(0, 3), st.randoms(use_true_random=False))
def test_splits_never_share_an_image(samples, seed, rng):
    convs = [Conversation([('user', [*(ImageRef(variants(n, rng)) for n in names), f'Q{i}']), ('assistant', 'A')]) for i, names in enumerate(samples)]
    fr = {'train': 0.7, 'val': 0.2, 'test': 0.1}
    splits = split_conversations(convs, fr, seed=seed)
    assert shared_images(splits) == {}
    assert sorted(id(c) for v in splits.values() for c in v) == sorted(id(c) for c in convs)
    again = split_conversations(list(reversed(convs)), fr, seed=seed)     # input order does not matter
    assert {s: sorted(id(c) for c in v) for s, v in again.items()} == {s: sorted(id(c) for c in v) for s, v in splits.items()}

def test_split_sizes_follow_fractions():
    convs = [Conversation([('user', [ImageRef(f"img/{i}.jpg"), 'Q']), ('assistant', 'A')]) for i in range(1000)]
    sizes = {s: len(v) for s, v in split_conversations(convs, {'train': 8, 'val': 1, 'test': 1}, seed=3).items()}
    assert sizes == {'train': 800, 'val': 100, 'test': 100}
    text = [Conversation([('user', 'Hi'), ('assistant', 'Hello')]) for _ in range(5)]
    assert sorted(len(v) for v in split_conversations(text, {'a': 0.5, 'b': 0.5}).values()) == [0, 5]   # duplicates stay together
    with pytest.raises(ValueError, match='fractions'): split_conversations(convs, {'train': -1})
    uneven = split_conversations(convs[:10] + [Conversation([('user', [ImageRef('big.jpg'), f'Q{i}']), ('assistant', 'A')]) for i in range(50)],
                                 {'a': 0.5, 'b': 0.5, 'none': 0})
    assert uneven['none'] == [] and shared_images(uneven) == {}                      # a share of 0 gets nothing, even when the others overshoot


# --- statistics and writing ---------------------------------------------------------------------------------------

def test_stats_lengths_and_round_trip(folder):
    (folder/'img'/'bad.png').write_bytes((folder/'img'/'noise.png').read_bytes()[:50])
    recs = [{'image_path': f"img/{n}.png", 'QnA': [{'Q': 'What?', 'A3': 'Noise.'}]} for n in ('noise', 'tall', 'bad', 'noise')]
    (folder/'q.jsonl').write_text('\n'.join(map(json.dumps, recs)))
    convs, report = read_conversations(folder/'q.jsonl', check_images=False)
    s = data_stats(convs)
    assert (s.samples, s.images, s.distinct_images, s.turns, s.tool_calls) == (4, 4, 3, 8, 0)
    lens = token_lengths(convs, 'qwen2_5_vl')
    assert len(lens.lengths) == 3 and list(lens.index) == [0, 1, 3] and where(lens.report) == [('q.jsonl', 3, 'render')]
    assert lens.lengths[0] == lens.lengths[2] and (lens.trained > 0).all()
    good = [convs[i] for i in lens.index]
    back, report = read_conversations(write_conversations(good, folder/'out'/'q.jsonl'))
    assert len(report) == 0 and [c.turns for c in back] == [c.with_sizes().turns for c in good]
    assert [c.meta['line'] for c in back] == [1, 2, 3] and all('record' not in c.meta for c in back)


# --- the research repo's seed files -------------------------------------------------------------------------------

def test_seed_files():
    seed = require_fixture('seed')
    convs, report = read_conversations(seed/'sample_data'/'train_data.json')
    assert (len(convs), len(report)) == (4, 0)
    convs, report = read_conversations(seed/'sample_data'/'data_example.json', check_images=False)
    assert len(report) == 0 and len(convs) == 10
    assert [len(c.images) for c in convs][:6] == [1, 1, 1, 1, 1, 3] and len(convs[6].videos) == 1
    convs, report = read_conversations([seed/'refcoco'/'refcoco_qa_pairs_sample.jsonl', *sorted((seed/'refcoco_id').glob('*.json'))], check_images=False)
    assert len(report) == 0 and len(convs) == 50 + sum(len(json.loads(p.read_text())) for p in (seed/'refcoco_id').glob('*.json'))
    assert shared_images(split_conversations(convs, {'train': 0.5, 'val': 0.5})) == {}
    # the research crop-tool forms are formats too (registered by vlmkit.tools): calls and crops where they happen
    convs, report = read_conversations(seed/'refcoco'/'refcoco_qa_pairs_croptool_sample.json', check_images=False)
    assert len(report) == 0 and len(convs) == 3 and {c.meta['format'] for c in convs} == {'research_croptool'}
    assert all(len(c.tool_pairs) == len(c.images) - 1 for c in convs)   # one crop per call, after the question's image
    mix, report = read_mixture(seed/'datainfo'/'theo_test_datainfo.json', path_map={'./Ovis/src_theo/sample_data': seed/'sample_data'})
    assert [(s.name, s.loaded) for s in mix.sources] == [('test_dataset', 4)] and len(report) == 0


def test_relative_data_paths_resolve_once(tmp_path, monkeypatch):
    "A data file named by a relative path: its images resolve against its folder once (not the folder twice)."
    monkeypatch.chdir(tmp_path)
    (tmp_path/'data'/'img').mkdir(parents=True)
    noise_image(0, (32, 24)).save(tmp_path/'data'/'img'/'a.png')
    conv = Conversation([('user', [ImageRef('img/a.png'), 'What?']), ('assistant', 'Noise.')])
    (tmp_path/'data'/'train.jsonl').write_text(conv.to_json() + '\n')
    convs, report = read_conversations('data/train.jsonl')
    assert len(report) == 0 and convs[0].images[0].item.src == os.path.join('data', 'img/a.png')
    back, report = read_conversations(write_conversations(convs, 'out/again.jsonl'))   # written relative to the new file
    assert len(report) == 0 and back[0].images[0].item.load().size == (32, 24)


def test_pil_images_written_under_a_relative_folder_read_back(tmp_path, monkeypatch):
    "PIL images saved under a relative `image_dir` are written relative to the data file, as reading resolves them."
    from vlmkit.images import synthetic_image
    monkeypatch.chdir(tmp_path)
    img, _ = synthetic_image(0, (40, 30))
    conv = Conversation([Turn('user', [ImageRef(img), 'What is it?']), Turn('assistant', 'A shape.')])
    path = write_conversations([conv], 'prompts/train.jsonl', image_dir='prompts/images')
    convs, report = read_conversations(path)
    assert not report.problems and len(convs) == 1, report.describe()
    assert convs[0].images[0].item.load().size == (40, 30)
