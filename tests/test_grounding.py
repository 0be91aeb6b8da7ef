"""Issue 17's acceptance for the grounding evaluation (vlmkit.grounding): oracle answers written in each family's syntax
score 100% on every split of the synthetic set; answers shifted by a known offset score the accuracy that follows from
the box widths; parse failures are misses and are listed; IoU agrees with a hand-computed table and with pycocotools;
a tiny model of each family runs end to end through `vlmkit eval refcoco`; a rerun after an interruption decodes only
the missing refs. The model's answers are replaced by chosen texts (through `Family.generate`) where a score is checked,
so the whole path (render, decode, parse, score, table) runs on known answers."""
import contextlib, io, json
import numpy as np
import pytest, torch
from vlmkit.boxes import box_iou, convert_boxes, format_boxes
from vlmkit.cli import vlmkit_main
from vlmkit.family import FAMILIES, Family
from vlmkit.grounding import (evaluate_grounding, failures, first_box, grounding_record, load_splits, read_results,
                              results_table, score_answer)
from vlmkit.refcoco import SPLITS, Ref, make_synthetic_refcoco


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    root = make_synthetic_refcoco(tmp_path_factory.mktemp('syn')/'refcoco', n_images=4)
    return root, load_splits(root, image_root=root/'images')


def answering(monkeypatch, fam, answer_of):
    """Make `fam.generate` return, for each rendered prompt in order, the token ids of `answer_of(i, rendered)` followed by the
    stop token: the texts a model would have written. Returns the list of batch sizes it was called with."""
    calls, count = [], [0]
    def generate(self, model, processor, rendered, max_new_tokens=64, **kw):
        tok = getattr(processor, 'tokenizer', processor)
        stop = self.stop_ids(processor)[0]
        rows = []
        for r in rendered:
            rows.append(tok(answer_of(count[0], r), add_special_tokens=False)['input_ids'] + [stop]); count[0] += 1
        calls.append(len(rows))
        out = torch.full((len(rows), max(map(len, rows))), tok.pad_token_id)
        for i, ids in enumerate(rows): out[i, :len(ids)] = torch.tensor(ids)
        return out
    monkeypatch.setattr(Family, 'generate', generate)
    return calls

def written(fam, box, r) -> str:
    "Pixel `box` as `fam` writes it for the rendered prompt `r` (its image's size, its resized size)."
    resized = r.resized_sizes[0] if r.resized_sizes else None
    return format_boxes(convert_boxes([box], 'pixel', fam.syntax.space, r.image_sizes[0], resized), fam.syntax, labels='it')


def test_synthetic_set_has_every_split(synthetic):
    _, refs = synthetic
    assert {(r.dataset, r.split) for r in refs} == set(SPLITS)

def test_oracle_answers_score_100_on_every_split(fam, tiny, synthetic, monkeypatch):
    _, refs = synthetic
    answering(monkeypatch, fam, lambda i, r: written(fam, refs[i].box, r))
    results = evaluate_grounding(*tiny, refs, family=fam, batch_size=5, progress=False)
    rows = results_table(results)
    assert [(r['dataset'], r['split']) for r in rows[:8]] == list(SPLITS)
    assert all(r['acc'] == 1.0 and r['parse_failures'] == r['errors'] == 0 for r in rows), rows
    assert min(r['iou'] for r in results) > 0.8 and failures(results) == []

def test_shifted_answers_score_the_expected_accuracy(fam, tiny, synthetic, monkeypatch):
    "Shifted by dx along x (away from the nearer border), a w-wide box has IoU (w - dx) / (w + dx): a hit iff w >= 3 dx."
    _, refs = synthetic
    dx = 20.0
    def shifted(ref):
        x1, y1, x2, y2 = ref.box
        d = dx if x2 + dx <= ref.size[0] else -dx
        assert 0 <= x1 + d, f"{ref.id}: no room to shift"
        return [x1 + d, y1, x2 + d, y2]
    answering(monkeypatch, fam, lambda i, r: written(fam, shifted(refs[i]), r))
    results = evaluate_grounding(*tiny, refs, family=fam, batch_size=8, progress=False)
    widths = np.array([r.box[2] - r.box[0] for r in refs])
    expected = (widths - dx) / (widths + dx)
    got = np.array([x['iou'] for x in results])
    assert np.abs(got - expected).max() < 0.06, np.abs(got - expected).max()   # rounding to the syntax's precision only
    clear = np.abs(expected - 0.5) > 0.06                                       # refs not on the 0.5 edge
    assert clear.sum() >= len(refs) // 2
    assert [x['hit'] for x, c in zip(results, clear) if c] == list((widths >= 3 * dx)[clear])
    assert 0 < sum(x['hit'] for x in results) < len(refs), "choose dx so that some refs pass and some do not"

def test_parse_failures_are_misses_and_listed(fam, tiny, synthetic, monkeypatch):
    _, refs = synthetic
    bad = {0: 'I do not know.', 1: 'nan nan', 2: ''}
    answering(monkeypatch, fam, lambda i, r: bad[i] if i in bad else written(fam, refs[i].box, r))
    results = evaluate_grounding(*tiny, refs[:6], family=fam, batch_size=3, progress=False)
    assert [x['hit'] for x in results] == [False] * 3 + [True] * 3
    listed = failures(results)
    assert [x['id'] for x in listed] == [r.id for r in refs[:3]]
    assert all(x['error'].startswith('parse: ') and x['iou'] == 0.0 and x['pred_box'] is None for x in listed)
    assert results_table(results)[-1]['parse_failures'] == 3

def test_invalid_boxes_are_parse_misses():
    ref = Ref('refcoco', 'val', 0, 0, 0, 0, 'a.jpg', (200, 100), (20., 10., 80., 60.), 'it')
    for text, why in [('[[400, 100, 100, 600]]', 'inverted'), ('[[nan, 100, 400, 600]]', 'NaN'), ('[[100, 100, 100, 600]]', 'empty'),
                      ('[[100, 100, 400, 1001]]', 'out of range'), ('<box>[[100, 100, 400]]</box>', 'wrong arity')]:
        rec = score_answer(ref, text, 'internvl3_5')
        assert not rec['hit'] and rec['error'].startswith(f'parse: {why}'), (text, rec['error'])

def test_bare_and_tagged_forms_read_the_same():
    size = (640, 480)
    tagged = first_box('<ref>a dog</ref><box>[[100, 200, 300, 400]]</box>', 'internvl3_5', size)
    assert tagged == first_box('a dog[[100, 200, 300, 400]]', 'internvl3_5', size) == first_box('[[100, 200, 300, 400]]', 'internvl3_5', size)
    assert tagged == ([64.0, 96.0, 192.0, 192.0], None)
    assert first_box('(0.100,0.200),(0.300,0.400)', 'ovis2_5', size) == ([64.0, 96.0, 192.0, 192.0], None)   # Ovis, tags stripped
    assert first_box('[{"bbox_2d": [50, 100, 150, 200]}]', 'qwen2_5_vl', size, (320, 240)) == ([100.0, 200.0, 300.0, 400.0], None)
    assert first_box('<think>hmm [[0, 0, 5, 5]]</think>[[100, 200, 300, 400]]', 'internvl3_5', size)[0] == tagged[0]  # the answer, not the thought

def test_iou_agrees_with_a_hand_table_and_pycocotools():
    from pycocotools import mask as mask_utils
    gt = [0, 0, 10, 10]
    hand = [([0, 0, 10, 10], 1.0), ([5, 0, 15, 10], 50 / 150), ([0, 0, 5, 5], 25 / 100), ([2, 2, 12, 12], 64 / 136),
            ([10, 0, 20, 10], 0.0), ([0.5, 0.5, 9.5, 9.5], 81 / 100)]   # no +1: a 10 px box from 0 to 10 has area 100
    for pred, want in hand: assert abs(box_iou(pred, gt)[0, 0] - want) < 1e-12, pred
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (200, 2)); wh = rng.uniform(1, 200, (200, 2))
    off, scale = rng.uniform(-60, 60, (200, 2)), rng.uniform(0.5, 1.5, (200, 2))
    p, g = np.c_[xy, xy + wh], np.c_[xy + off, xy + off + wh * scale]   # pairs that overlap a little, a lot, or not at all
    coco = mask_utils.iou(np.c_[p[:, :2], p[:, 2:] - p[:, :2]], np.c_[g[:, :2], g[:, 2:] - g[:, :2]], [0] * len(g))
    assert np.allclose(box_iou(p, g), coco, atol=1e-12)
    rec = grounding_record(Ref('refcoco', 'val', 0, 0, 0, 0, 'a.jpg', (20, 20), tuple(gt), 'it'), 'x', 'y', [5, 0, 15, 10])
    assert abs(rec['iou'] - 1 / 3) < 1e-12 and rec['hit'] is False

def run_cli(*args) -> tuple[int, str]:
    with contextlib.redirect_stdout(out := io.StringIO()): status = vlmkit_main(['eval', 'refcoco', *args, '--no-progress'])
    return status, out.getvalue()

def test_cli_end_to_end(fam, synthetic, tmp_path):
    root, refs = synthetic
    status, printed = run_cli('--model', f'tiny:{fam.name}', '--data', str(root), '--out', str(tmp_path), '--batch-size', '8', '--max-new-tokens', '6')
    assert status == 0
    table = (tmp_path/'table.md').read_text()
    assert printed.startswith(table) and len(table.splitlines()) == 2 + 8 + 1 and '| macro average | 8 of 8 splits |' in table
    assert (tmp_path/'failures.png').stat().st_size > 0 and (tmp_path/'iou_histograms.png').stat().st_size > 0   # vlmkit.grounding_viz's figures
    results = read_results(tmp_path/'results.jsonl')
    assert [r['id'] for r in results] == [r.id for r in refs] and {r['family'] for r in results} == {fam.name}
    assert len(read_results(tmp_path/'failures.jsonl')) == sum(not r['hit'] for r in results)

def test_cli_cache_static_gives_the_dynamic_cache_answers(synthetic, tmp_path):
    "`--cache static` (the engine's preallocated KV cache, the compiled cache's eager twin) answers every ref as the default cache does."
    root, _ = synthetic
    args = ['--model', 'tiny:qwen2_5_vl', '--data', str(root), '--split', 'refcoco/val,refcocog/test', '--batch-size', '4', '--max-new-tokens', '6']
    assert run_cli(*args, '--out', str(tmp_path/'dynamic'))[0] == 0 and run_cli(*args, '--out', str(tmp_path/'static'), '--cache', 'static')[0] == 0
    answers = lambda d: [(r['id'], r['text']) for r in read_results(tmp_path/d/'results.jsonl')]
    assert answers('static') == answers('dynamic') and len(answers('static')) > 4

def test_cli_rerun_finishes_only_the_missing_items(synthetic, tmp_path, monkeypatch):
    root, _ = synthetic
    fam = FAMILIES['internvl3_5']
    calls = answering(monkeypatch, fam, lambda i, r: 'no box')
    args = ['--model', 'tiny:internvl3_5', '--data', str(root), '--split', 'refcoco/val,refcocog/test', '--out', str(tmp_path), '--batch-size', '2']
    assert run_cli(*args)[0] == 0
    n = sum(calls)
    lines = (tmp_path/'results.jsonl').read_text().splitlines(keepends=True)
    k = 3
    (tmp_path/'results.jsonl').write_text(''.join(lines[:k]) + lines[k][:25])   # stopped while writing record k + 1
    calls.clear()
    assert run_cli(*args)[0] == 0
    assert sum(calls) == n - k
    assert [json.loads(l)['id'] for l in (tmp_path/'results.jsonl').read_text().splitlines()] == [json.loads(l)['id'] for l in lines]

def test_cli_errors_are_one_line(tmp_path, synthetic):
    root, _ = synthetic
    with contextlib.redirect_stderr(err := io.StringIO()):
        status = vlmkit_main(['eval', 'refcoco', '--model', 'tiny:nope', '--data', str(root), '--out', str(tmp_path)])
    assert status == 2 and err.getvalue().startswith("vlmkit: error: --model tiny:nope: unknown family 'nope'")
    with contextlib.redirect_stderr(err := io.StringIO()):
        status = vlmkit_main(['eval', 'refcoco', '--model', 'tiny:ovis2_5', '--data', str(root), '--split', 'refcoco/nosuch', '--out', str(tmp_path)])
    assert status == 2 and 'refcoco' in err.getvalue() and len(err.getvalue().splitlines()) == 1


def test_results_of_two_families_are_not_pooled_into_one_table():
    rec = dict(dataset='refcoco', split='val', iou=1.0, hit=True, error=None)
    with pytest.raises(ValueError, match=r"2 families \(internvl3_5, ovis2_5\) would be pooled"):
        results_table([rec | dict(family='ovis2_5'), rec | dict(family='internvl3_5')])

def test_a_batch_that_fails_to_generate_is_retried_one_by_one_and_only_the_bad_ref_is_lost(synthetic, monkeypatch):
    "A prompt the model cannot run (too long, out of memory) fails its batch: the others are answered alone, it gets an error record."
    fam = FAMILIES['internvl3_5']
    model, processor = fam.tiny()
    _, refs = synthetic
    refs = refs[:4]
    calls = []
    def generate(self, model, processor, rendered, max_new_tokens=64, **kw):
        calls.append(len(rendered))
        if len(calls) in (1, 3):                          # the batch of 4, then ref 1 alone
            raise RuntimeError("the prompt is longer than the model's context")
        tok = getattr(processor, 'tokenizer', processor)
        ids = tok(written(fam, (0, 0, 8, 8), rendered[0]), add_special_tokens=False)['input_ids'] + [self.stop_ids(processor)[0]]
        return torch.tensor([ids] * len(rendered))
    monkeypatch.setattr(Family, 'generate', generate)
    results = evaluate_grounding(model.float().eval(), processor, refs, family=fam, batch_size=4, progress=False)
    assert calls == [4, 1, 1, 1, 1]                     # the batch, then each ref alone
    errors = [r['error'] for r in results]
    assert errors[1].startswith("generate: RuntimeError: the prompt is longer"), errors
    assert [e is None or e.startswith('parse') for i, e in enumerate(errors) if i != 1] == [True] * 3, errors
