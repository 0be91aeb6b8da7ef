"""`vlmkit.collation` for every family through the registry (`FAMILIES`, `fam.tiny()`): each visual's `Span` matches
its ids and tensor rows; the token view shows every id once and each visual as one item; truncation at every length
never splits a visual, keeps tensors matched to the visual tokens left, and the kept sample runs (its logits are the
whole sample's first ones); packing by budget puts every sample in exactly one row within the budget, or reports it."""
import pytest, torch
from vlmkit.collation import pack_rows_by_budget, show_rendered, truncate, visual_tokens
from vlmkit.conversation import Conversation, ConversationError, ImageRef, ToolCall, ToolResult, Turn, VideoRef
from vlmkit.family import Rendered
from vlmkit.testing import noise_image

BOX = [10, 8, 50, 40]

def trajectory(thought:str='I will look closer. ', size=(72, 56)) -> Conversation:
    "A crop-tool trajectory: image + question, reasoning, the call, the crop it returned, the answer."
    image = noise_image(0, size)
    return Conversation([
        Turn('user', [ImageRef(image), 'Where is the cup?']),
        Turn('assistant', [thought, ToolCall('Crop', {'box': BOX}, text=f'<tool_call>Crop {BOX}</tool_call>'),
                           ToolResult([ImageRef(image, region=tuple(BOX))]), 'The cup is at the top left.'])],
        system='You can crop.')

@pytest.fixture(scope='module')
def tiny(fam):
    model, processor = fam.tiny()
    return fam.enable_packing(model.float().eval()), processor

@pytest.fixture(scope='module')
def sample(fam, tiny):
    return fam.render(trajectory(), tiny[1], training=True)

@torch.no_grad()
def forward(fam, model, r:Rendered):
    "Logits `[L, V]` and loss of one sample alone (padded path)."
    batch = fam.collate([r], pack=False)
    labels = batch.pop('labels')
    return model(**batch).logits[0], model(**batch, labels=labels).loss

def check_spans(r:Rendered):
    "Spans in order, disjoint, masked, and accounting for every row of every visual tensor."
    assert [s.start for s in r.spans] == sorted(s.start for s in r.spans)
    assert all(a.end <= b.start for a, b in zip(r.spans, r.spans[1:]))
    for s in r.spans:
        assert 0 <= s.start < s.end <= len(r) and s.kind in ('image', 'video')
        if r.labels is not None: assert (r.labels[s.start:s.end] == -100).all()
    for k, v in r.visual.items(): assert sum(s.rows.get(k, 0) for s in r.spans) == len(v), k
    assert sum(s.kind == 'image' for s in r.spans) == len(r.image_sizes)

def test_spans_match_ids_and_tensors(fam, tiny, sample):
    check_spans(sample)
    assert len(sample.spans) == 2
    outside = torch.ones(len(sample), dtype=torch.bool)
    for s in sample.spans: outside[s.start:s.end] = False
    tok = tiny[1].tokenizer
    text = tok.decode(sample.input_ids[outside])
    assert 'Where is the cup?' in text and '<tool_call>Crop [10, 8, 50, 40]</tool_call>' in text
    assert (sample.input_ids[outside] >= 0).all()       # Ovis's negative visual ids all sit inside spans

def test_view(fam, tiny, sample):
    conv = trajectory()
    v = show_rendered(sample, tiny[1], conv)
    chips = [x for x in v.items if x[0] != 'text']
    assert [(k, l, img is not None) for k, l, img in chips] == [
        ('image', f"image {i + 1}: {s.end - s.start} tokens", True) for i, s in enumerate(sample.spans)]
    assert sum(x[0] == 'text' for x in v.items) + v.n_visual == len(sample)   # every id shown once
    trained = ''.join(s for k, s, t in v.items if k == 'text' and t)
    assert trained == tiny[1].tokenizer.decode(sample.labels[sample.labels != -100])
    page = v._repr_html_()
    assert page.count('data:image/png;base64,') == 2 and page.count('tokens</span>') == 2
    plain = str(v)
    assert plain.startswith(f"{len(sample)} tokens: {sample.n_trained} trained") and '[image 2:' in plain and '⟦' in plain
    assert '\x1b[42;30m' in v.text(color=True)
    prompt = show_rendered(fam.render(Conversation(conv.turns[:1]), tiny[1]), tiny[1])   # no labels, no images given
    assert prompt.n_trained == 0 and [x[2] for x in prompt.items if x[0] != 'text'] == [None]

def test_truncation_never_splits_a_visual(fam, sample):
    for n in range(1, len(sample) + 2):
        t = truncate(sample, n)
        kept = t.kept
        assert kept <= n and not any(s.start < kept < s.end for s in sample.spans), n
        assert t.dropped_tokens == len(sample) - kept and t.dropped_visuals == [s for s in sample.spans if s.end > kept]
        if t.sample is None:
            assert 'prompt alone' in t.problem and (sample.labels[:kept] == -100).all()
            continue
        r = t.sample
        assert len(r) == kept and torch.equal(r.input_ids, sample.input_ids[:kept]) and torch.equal(r.labels, sample.labels[:kept])
        assert r.spans == [s for s in sample.spans if s.end <= kept]
        check_spans(r)
        assert t.trained_lost == sample.n_trained - r.n_trained
        for k, v in r.row.items(): assert torch.equal(v, sample.row[k][:kept])
        pos = getattr(sample, 'positions', None)
        if pos is not None: assert torch.equal(r.positions, pos[:, :kept])

def test_truncated_sample_runs(fam, tiny, sample):
    "Cut inside the crop, inside the answer, and not at all: the kept sample's logits are the whole one's first, its loss finite."
    model, _ = tiny
    whole, _ = forward(fam, model, sample)
    crop = sample.spans[1]
    for n in (crop.start + 1, crop.end + 5, len(sample)):
        t = truncate(sample, n)
        assert t.sample is not None and t.kept <= n
        logits, loss = forward(fam, model, t.sample)
        assert torch.isfinite(loss) and (logits - whole[:t.kept]).abs().max() < 1e-4, (n, t)
    assert truncate(sample, crop.start + 1).dropped_visuals == [crop]

def test_a_long_prompt_is_reported(fam, sample):
    first = int((sample.labels != -100).nonzero()[0])
    t = truncate(sample, first)
    assert t.sample is None and f"first trained token is at position {first}" in t.problem and 'no sample' in repr(t)
    untrained = Rendered(sample.input_ids, torch.full_like(sample.labels, -100), sample.visual, spans=sample.spans)
    assert truncate(untrained, len(sample)).problem == 'it has no trained tokens'

def test_visual_token_budget(fam, sample):
    first = sample.spans[0].end - sample.spans[0].start
    t = truncate(sample, len(sample), max_visual_tokens=first)
    assert t.kept == sample.spans[1].start and t.sample.spans == sample.spans[:1] and visual_tokens(t.sample) == first

def test_video(fam, tiny):
    "A video's span is cut before, never inside, where the family's processor reads videos here."
    frames = [noise_image(i, (64, 48)) for i in range(4)]
    conv = Conversation([Turn('user', ['Watch this. ', VideoRef(frames), 'What happens?']), Turn('assistant', 'Noise.')])
    try: r = fam.render(conv, tiny[1], training=True)
    except ConversationError as e:
        if 'torchvision' in str(e): pytest.skip(f"{fam.name} reads videos through torchvision here: {e}")
        raise
    check_spans(r)
    video = [s for s in r.spans if s.kind == 'video']
    assert video
    t = truncate(r, video[0].start + 1)
    assert t.kept == video[0].start and t.sample is None and t.dropped_visuals == r.spans   # nothing trained before it

def test_packing_by_budget(fam, tiny):
    model, processor = tiny
    samples = [fam.render(trajectory('Let me look. ' * (1 + i * 5 % 7), size=(72 + 8 * (i % 3), 56)), processor, training=True)
               for i in range(7)]
    samples.append(fam.render(trajectory('Let me look. ' * 60), processor, training=True))
    lengths = [len(s) for s in samples]
    budget = max(lengths[:-1]) + min(lengths) + 5        # the last sample alone is over it
    assert lengths[-1] > budget
    p = pack_rows_by_budget(samples, budget)
    assert sorted(i for row in p.rows for i in row) == list(range(7)) and list(p.left_out) == [7]
    assert 'over the budget' in p.left_out[7] and all(n <= budget for n in p.row_tokens())
    assert any(len(row) > 1 for row in p.rows) and 0 < p.fill <= 1
    assert [i for row in p.rows for i in row] == list(range(7))          # in order
    q = pack_rows_by_budget(samples, budget, truncate_long=True)
    assert sorted(i for row in q.rows for i in row) == list(range(8)) and not q.left_out
    assert len(q.samples[7]) <= budget and q.truncated[7].trained_lost > 0 and all(n <= budget for n in q.row_tokens())
    vis = max(visual_tokens(s) for s in samples)
    w = pack_rows_by_budget(samples, budget, max_visual_tokens=vis, truncate_long=True)
    assert all(sum(visual_tokens(w.samples[i]) for i in row) <= vis for row in w.rows)
    assert sorted(i for row in w.rows for i in row) == list(range(8))
    with torch.no_grad():
        for row, batch in zip(q.rows, q.batches(fam)):
            assert batch['input_ids'].shape[-1] == sum(len(q.samples[i]) for i in row)
            assert torch.isfinite(model(**batch).loss)

def test_packing_reports_untrainable_samples(fam, tiny, sample):
    untrained = Rendered(sample.input_ids, torch.full_like(sample.labels, -100), sample.visual, spans=sample.spans)
    p = pack_rows_by_budget([sample, untrained, sample], len(sample) * 2)
    assert p.rows == [[0, 2]] and p.left_out == {1: 'it has no trained tokens'} and '1 left out' in repr(p)
    first = int((sample.labels != -100).nonzero()[0])
    q = pack_rows_by_budget([sample], first, truncate_long=True)
    assert q.rows == [] and 'prompt alone' in q.left_out[0] and q.fill == 0.0
