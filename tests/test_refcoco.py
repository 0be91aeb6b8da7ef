"""vlmkit.refcoco beyond the notebook's examples: hostile refs pickles run nothing, broken folders and jsonl lines
stop the load with the file (and line, ref or path) named, the synthetic set keeps its splits apart, and the
training-data guard refuses evaluation images however their paths are written."""
import json, os, pickle, shutil, time
from pathlib import Path
import pytest
from vlmkit.conversation import Conversation
from vlmkit.refcoco import (EVAL_SPLITS, LOCATION_WORDS, UnsafePickleError, eval_image_ids, load_refcoco,
                            load_refcoco_jsonl, make_synthetic_refcoco, read_refs_pickle, refs_file, refuse_eval_images,
                            write_refcoco_jsonl)

DATASET_SPLITS = {'refcoco': ('train', 'val', 'testA', 'testB'), 'refcoco+': ('train', 'val', 'testA', 'testB'),
                  'refcocog': ('train', 'val', 'test')}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return make_synthetic_refcoco(tmp_path_factory.mktemp('synthetic'))

@pytest.fixture
def copy(root, tmp_path):
    "A writable copy of the synthetic set (the datasets' folders; images shared by path)."
    for ds in DATASET_SPLITS: shutil.copytree(root/ds, tmp_path/ds)
    return tmp_path


# ---- the refs pickle runs nothing ----
class _System:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))

class _Eval:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (eval, (f"open({str(self.marker)!r}, 'w').write('ran')",))

@pytest.mark.parametrize('payload, global_name', [(_System, f"{os.system.__module__}.system"), (_Eval, 'eval')])
@pytest.mark.parametrize('protocol', [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_carrying_code_is_refused_and_nothing_runs(tmp_path, payload, global_name, protocol):
    marker = tmp_path/'marker'
    bad = tmp_path/'refs(unc).p'
    bad.write_bytes(pickle.dumps([{'ref_id': 0, 'split': 'val', 'sentences': [payload(marker)]}], protocol=protocol))
    with pytest.raises(UnsafePickleError) as e: read_refs_pickle(bad)
    assert str(bad) in str(e.value) and 'refused global ' in str(e.value)
    named = str(e.value).split('refused global ')[1].split(':')[0]   # as the file writes it: protocols < 3 say __builtin__
    assert named == global_name or named in (f'builtins.{global_name}', f'__builtin__.{global_name}'), named
    assert not marker.exists()

def test_load_refuses_a_hostile_pickle_in_a_dataset_folder(copy, tmp_path):
    marker = tmp_path/'marker'
    (copy/'refcoco'/'refs(unc).p').write_bytes(pickle.dumps([{'ref_id': 0, 'split': 'val', 'x': _System(marker)}]))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p: refused global"): load_refcoco(copy/'refcoco', 'val')
    with pytest.raises(UnsafePickleError): eval_image_ids(copy)
    assert not marker.exists()

def test_any_class_is_refused_even_a_harmless_one(tmp_path):
    from collections import OrderedDict
    p = tmp_path/'refs(umd).p'
    p.write_bytes(pickle.dumps([OrderedDict(ref_id=1)]))
    with pytest.raises(UnsafePickleError, match='refused global collections.OrderedDict'): read_refs_pickle(p)

def test_plain_data_of_every_protocol_loads(tmp_path):
    refs = [{'ref_id': 1, 'split': 'testB', 'sent_ids': [3], 'box': (1.5, 2, 3, 4), 'flag': True, 'none': None,
             'sentences': [{'sent_id': 3, 'sent': 'man in red', 'tokens': ['man', 'in', 'red'], 'raw': 'Man in red'}]}]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path/f'refs{protocol}.p'
        p.write_bytes(pickle.dumps(refs, protocol=protocol))
        assert read_refs_pickle(p) == refs

def test_a_truncated_or_wrong_pickle_is_a_clear_error(tmp_path):
    p = tmp_path/'refs(unc).p'
    p.write_bytes(pickle.dumps([{'ref_id': 1}])[:-3])
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: not a readable refs pickle"): read_refs_pickle(p)
    p.write_bytes(pickle.dumps({'ref_id': 1}))
    with pytest.raises(ValueError, match='expected a list of ref dicts, got dict'): read_refs_pickle(p)


# ---- folders, partitions, splits ----
def test_partition_is_picked_from_the_files_present(copy):
    assert refs_file(copy/'refcoco').name == 'refs(unc).p'
    assert refs_file(copy/'refcocog').name == 'refs(umd).p'
    shutil.copy(copy/'refcocog'/'refs(umd).p', copy/'refcocog'/'refs(google).p')   # RefCOCOg ships both
    assert refs_file(copy/'refcocog').name == 'refs(umd).p'
    other = copy/'mine'
    shutil.copytree(copy/'refcoco', other)
    assert refs_file(other).name == 'refs(unc).p'                                    # the one standard file present
    shutil.copy(other/'refs(unc).p', other/'refs(umd).p')
    with pytest.raises(ValueError, match=r"cannot tell the standard partition from refs\(umd\)\.p, refs\(unc\)\.p"): refs_file(other)
    assert refs_file(other, 'refcocog').name == 'refs(umd).p'
    assert {r.dataset for r in load_refcoco(other, 'val', dataset='refcoco+')} == {'refcoco+'}

def test_no_refs_file_or_the_wrong_one_is_a_clear_error(copy):
    (copy/'refcoco'/'refs(unc).p').rename(copy/'refcoco'/'refs(google).p')
    with pytest.raises(FileNotFoundError, match=r"refcoco is evaluated on refs\(unc\)\.p, which is not there \(found: refs\(google\)\.p\)"):
        load_refcoco(copy/'refcoco', 'val')
    empty = copy/'empty'; empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no refs\(<partition>\)\.p file"): load_refcoco(empty, 'val')
    (copy/'refcoco+'/'instances.json').unlink()
    with pytest.raises(FileNotFoundError, match='no instances.json'): load_refcoco(copy/'refcoco+', 'val')

def test_unknown_split_lists_the_splits_present(root):
    with pytest.raises(ValueError, match=r"no split 'test'; its splits are testA, testB, train, val"): load_refcoco(root/'refcoco', 'test')
    with pytest.raises(ValueError, match=r"no split 'testB'; its splits are test, train, val"): load_refcoco(root/'refcocog', 'testB')

def test_a_ref_whose_annotation_is_absent_names_the_ref_and_the_file(copy):
    inst = copy/'refcoco'/'instances.json'
    doc = json.loads(inst.read_text())
    refs = read_refs_pickle(copy/'refcoco'/'refs(unc).p')
    gone = next(r for r in refs if r['split'] == 'val')
    doc['annotations'] = [a for a in doc['annotations'] if a['id'] != gone['ann_id']]
    inst.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as e: load_refcoco(copy/'refcoco', 'val')
    msg = str(e.value)
    assert f"ref {gone['ref_id']} names annotation {gone['ann_id']}" in msg and str(inst) in msg, msg
    assert load_refcoco(copy/'refcoco', 'testA')   # other splits still load

def test_a_missing_image_names_every_path_tried(root, tmp_path):
    images = tmp_path/'coco'
    shutil.copytree(root/'images', images)
    refs = load_refcoco(root/'refcoco', 'testB', image_root=images)
    assert all(Path(r.image).is_file() and Path(r.image).parent.name == 'train2014' for r in refs)
    flat = tmp_path/'flat'                                     # image_root/file_name works too
    shutil.copytree(root/'images'/'train2014', flat)
    assert all(Path(r.image).parent == flat for r in load_refcoco(root/'refcoco', 'testB', image_root=flat))
    victim = refs[0]
    (images/'train2014'/victim.file_name).unlink()
    with pytest.raises(FileNotFoundError) as e: load_refcoco(root/'refcoco', 'testB', image_root=images)
    msg = str(e.value)
    assert str(images/victim.file_name) in msg and str(images/'train2014'/victim.file_name) in msg and 'refs(unc).p' in msg, msg
    assert load_refcoco(root/'refcoco', 'testB')               # listing refs needs no images

def test_refs_are_one_per_sentence_with_pixel_xyxy_boxes(root):
    doc = json.loads((root/'refcoco'/'instances.json').read_text())
    anns = {a['id']: a for a in doc['annotations']}
    pickled = [r for r in read_refs_pickle(root/'refcoco'/'refs(unc).p') if r['split'] == 'val']
    refs = load_refcoco(root/'refcoco', 'val')
    assert len(refs) == sum(len(r['sentences']) for r in pickled)
    assert len({r.id for r in refs}) == len(refs)
    for r in refs:
        x, y, w, h = anns[r.ann_id]['bbox']
        assert r.box == (x, y, x + w, y + h) and all(isinstance(v, float) for v in r.box)
        assert r.size == (320, 240) and r.file_name == f"COCO_train2014_{r.image_id:012d}.jpg" and r.image is None
        assert r.category in ('square', 'rectangle', 'circle', 'ellipse', 'triangle')


# ---- the synthetic set ----
def test_synthetic_set_is_fast_deterministic_and_split_disjoint(tmp_path):
    t0 = time.perf_counter()
    a = make_synthetic_refcoco(tmp_path/'a')
    assert time.perf_counter() - t0 < 5
    b = make_synthetic_refcoco(tmp_path/'b')
    c = make_synthetic_refcoco(tmp_path/'c', seed=1)
    for ds, splits in DATASET_SPLITS.items():
        name = refs_file(a/ds).name
        assert (a/ds/name).read_bytes() == (b/ds/name).read_bytes() != (c/ds/name).read_bytes()
        by_split = {s: load_refcoco(a/ds, s) for s in splits}
        assert all(by_split.values()), {s: len(v) for s, v in by_split.items()}
        images = [{r.image_id for r in v} for v in by_split.values()]
        assert sum(map(len, images)) == len(set().union(*images)), f"{ds}: an image is in two splits"
        sents = {r.ref_id: 0 for v in by_split.values() for r in v}
        for v in by_split.values():
            for r in v: sents[r.ref_id] += 1
        assert set(sents.values()) <= {1, 2, 3}
    plus = [r.expression for s in DATASET_SPLITS['refcoco+'] for r in load_refcoco(a/'refcoco+', s)]
    assert not [e for e in plus if set(e.split()) & set(LOCATION_WORDS)]
    longer = lambda ds: sum(len(r.expression.split()) for s in DATASET_SPLITS[ds] for r in load_refcoco(a/ds, s))
    assert longer('refcocog') / sum(len(load_refcoco(a/'refcocog', s)) for s in DATASET_SPLITS['refcocog']) > \
           longer('refcoco') / sum(len(load_refcoco(a/'refcoco', s)) for s in DATASET_SPLITS['refcoco'])

def test_synthetic_boxes_match_the_drawn_shapes(root):
    from vlmkit.images import synthetic_image
    for r in load_refcoco(root/'refcoco', 'val', image_root=root/'images'):
        _, objects = synthetic_image(r.image_id, (320, 240))   # seed 0: the image's seed is its id
        assert r.box in {tuple(map(float, o['box'])) for o in objects}

def test_synthetic_set_needs_four_images(tmp_path):
    with pytest.raises(ValueError, match='at least 4'): make_synthetic_refcoco(tmp_path, n_images=3)
    root = make_synthetic_refcoco(tmp_path, n_images=4)
    assert all(load_refcoco(root/ds, s) for ds, splits in DATASET_SPLITS.items() for s in splits)


# ---- InternVL's jsonl ----
def _line(**kw):
    d = {'image': 'data/coco/train2014/COCO_train2014_000000000003.jpg', 'sent': 'the red circle', 'bbox': [10, 20, 60, 80],
         'height': 240, 'width': 320}
    return json.dumps({**d, **kw})

def test_jsonl_reads_internvl_lines(tmp_path, root):
    p = tmp_path/'refcocog_test.jsonl'
    p.write_text(_line() + '\n\n' + _line(sent='blue square', bbox=[0, 0, 5.5, 7]) + '\n')
    refs = load_refcoco_jsonl(p)
    assert [(r.dataset, r.split, r.sent_id, r.image_id, r.box, r.size, r.expression) for r in refs] == [
        ('refcocog', 'test', 0, 3, (10., 20., 60., 80.), (320, 240), 'the red circle'),
        ('refcocog', 'test', 2, 3, (0., 0., 5.5, 7.), (320, 240), 'blue square')]
    assert refs[0].image == 'data/coco/train2014/COCO_train2014_000000000003.jpg'   # as written without image_root
    found = load_refcoco_jsonl(p, image_root=root/'images')
    assert found[0].image == str(root/'images'/'train2014'/'COCO_train2014_000000000003.jpg')
    assert load_refcoco_jsonl(p, dataset='refcoco', split='val')[0].id == 'refcoco/val/0'

def test_jsonl_round_trip(root, tmp_path):
    refs = [r for s in DATASET_SPLITS['refcoco+'] for r in load_refcoco(root/'refcoco+', s, image_root=root/'images')]
    path = write_refcoco_jsonl(refs, tmp_path/'any_name.jsonl')
    assert load_refcoco_jsonl(path) == refs

@pytest.mark.parametrize('bad, says', [
    ('{"image": "a.jpg", "sent": "x"', ':2: not JSON'),
    ('[1, 2]', ':2: expected a JSON object, got list'),
    (_line(bbox=None).replace('"bbox": null, ', ''), ':2: missing bbox'),
    (_line(bbox=[1, 2, 3]), ':2: bbox [1, 2, 3] is not 4 finite numbers'),
    (_line(bbox=[10, 20, 5, 8]), ':2: bbox [10, 20, 5, 8] is not x1, y1, x2, y2 with x1 < x2 and y1 < y2'),
    (_line(width='wide'), ':2: width/height'),
    (_line(sent_id=0) + '\n' + _line(sent_id=0), ':3: id refcoco/val/0 repeats line 2'),
])
def test_a_bad_jsonl_line_names_file_and_line(tmp_path, bad, says):
    p = tmp_path/'refcoco_val.jsonl'
    p.write_text(_line(sent_id=7) + '\n' + bad + '\n')
    with pytest.raises(ValueError) as e: load_refcoco_jsonl(p)
    assert str(p) + says in str(e.value), str(e.value)

def test_jsonl_without_dataset_or_split_says_how_to_give_them(tmp_path, root):
    p = tmp_path/'grounding.jsonl'
    p.write_text(_line() + '\n')
    with pytest.raises(ValueError, match=r"grounding.jsonl:1: no dataset/split"): load_refcoco_jsonl(p)
    with pytest.raises(FileNotFoundError, match=r"grounding.jsonl:1: image data/coco/train2014/COCO_train2014_000000000003.jpg not found; tried"):
        load_refcoco_jsonl(p, image_root=tmp_path, dataset='refcoco', split='val')


# ---- evaluation images stay out of training data ----
def _conv(path, line=None):
    return Conversation.from_llava([{'from': 'human', 'value': '<image>\nWhere is it?'}, {'from': 'gpt', 'value': 'Here.'}],
                                   images=[path], meta={'source': 'train.jsonl', **({'line': line} if line else {})})

def test_eval_ids_are_every_val_and_test_image(root):
    ids = eval_image_ids(root)
    want = {str(r.image_id) for ds, splits in DATASET_SPLITS.items() for s in splits if s in EVAL_SPLITS for r in load_refcoco(root/ds, s)}
    train = {str(r.image_id) for ds in DATASET_SPLITS for r in load_refcoco(root/ds, 'train')}
    assert ids == want and ids == eval_image_ids([root/ds for ds in DATASET_SPLITS])
    assert train - ids, 'the synthetic set keeps some images for training'
    refs = load_refcoco(root/'refcocog', 'test') + load_refcoco(root/'refcocog', 'train')
    assert eval_image_ids(refs) == {str(r.image_id) for r in refs if r.split == 'test'}
    assert all('refcocog/test' in eval_image_ids(refs).splits[i] for i in eval_image_ids(refs))

def test_eval_ids_from_jsonl_files(root, tmp_path):
    refs = load_refcoco(root/'refcoco', 'testA')
    p = write_refcoco_jsonl(refs, tmp_path/'refcoco_testA.jsonl')
    assert eval_image_ids(p) == eval_image_ids(refs) == {str(r.image_id) for r in refs}
    with pytest.raises(ValueError, match='not a RefCOCO folder'): eval_image_ids(tmp_path/'nothing')

def test_refuse_eval_images_by_canonical_id_whatever_the_prefix(root):
    ids = eval_image_ids(root)
    val = load_refcoco(root/'refcoco', 'val')[0].image_id
    train = next(int(i) for i in sorted({str(r.image_id) for r in load_refcoco(root/'refcoco', 'train')} - ids))
    convs = [_conv(f'/data/coco/train2017/{val:012d}.jpg', 1),                   # COCO 2017 name of an eval image
             _conv(f'train2014/COCO_train2014_{val:012d}.jpg', 2),               # COCO 2014 name, relative
             _conv(f'C:\\data\\COCO_TRAIN2014_{val:012d}.JPG', 3),               # another OS, upper case
             _conv(f'/data/coco/train2017/{train:012d}.jpg', 4),                 # a training image
             _conv('/photos/holiday.jpg', 5)]
    kept, refused = refuse_eval_images(convs, ids)
    assert kept == convs[3:]
    assert [r.index for r in refused] == [0, 1, 2]
    assert refused[0].images == (f'/data/coco/train2017/{val:012d}.jpg',)
    assert 'refcoco/val' in refused[0].splits and 'refcoco+/val' in refused[0].splits
    assert str(refused[1]) == f"train.jsonl:2: conversation 1: image train2014/COCO_train2014_{val:012d}.jpg is in {', '.join(refused[1].splits)}"
    kept, refused = refuse_eval_images(convs, set(ids))   # a plain set: refused all the same, split unknown
    assert len(refused) == 3 and refused[0].splits == ('an evaluation split',)
