"""Ovis2.5 family adapter: every official fixture case rendered through `OVIS2_5`, the released tiny checkpoint loaded by
`load_ovis`, videos, bad input, and the thinking budget through `Family.generate`."""
import json
import pytest
import torch
from vlmkit.conversation import Conversation, ConversationError, ImageRef, ToolCall, ToolResult, Turn, VideoRef
from vlmkit.family import FAMILIES, family_of
from vlmkit.testing import fixture, noise_image, require_fixture
from vlmkit.ovis.family import OVIS2_5, collate_ovis, render_ovis, show_ids, ovis_generation_kwargs
from vlmkit.ovis.generation import generate as ovis_generate
from vlmkit.ovis.preprocessing import INDICATOR_IDS, OvisProcessor, load_ovis_tokenizer

@pytest.fixture(scope='module')
def tiny_ovis():
    return OVIS2_5.tiny()

@pytest.fixture(scope='module')
def real():
    return OvisProcessor(load_ovis_tokenizer(require_fixture('tokenizers/qwen3_ovis25')))

def _cases():
    p = fixture('ovis25/ovis25_cases.json')
    return json.loads(p.read_text())['cases'] if p else []

def as_template_writes(messages):
    "The messages as the official template reduces them: assistant history after its last `</think>` (newlines stripped), literal placeholders deleted."
    clean = lambda s: s.replace('<image>', '').replace('<video>', '')
    def text(m, s): return clean(s).split('</think>')[-1].lstrip('\n') if m['role'] == 'assistant' else clean(s)
    out = []
    for m in messages:
        c = m['content']
        c = text(m, c) if isinstance(c, str) else [{**i, 'text': text(m, i['text'])} if i.get('type') == 'text' else i for i in c]
        out.append({**m, 'content': c})
    return out

# ---------------------------------------------------------------- the official fixtures

@pytest.mark.parametrize('case', _cases(), ids=[c['name'] for c in _cases()])
def test_render_equals_official_fixture(case, real):
    "ids, grids and pixel values of `render_ovis` = what the official `preprocess_inputs` returned (template reductions applied to the history)."
    root = require_fixture('ovis25/ovis25_cases.json').parent
    rec = torch.load(root/'ovis25_cases.pt', weights_only=True)['cases'][case['name']]
    conv = Conversation.from_messages(as_template_writes(case['messages']))
    proc = OvisProcessor(real.tokenizer, case['min_pixels'], case['max_pixels'])
    r = render_ovis(conv, proc, thinking=case['enable_thinking'], root=root)
    assert r.input_ids.tolist() == case['input_ids'] == rec['input_ids'][0].tolist()
    if rec['grid_thws'] is None: assert r.visual == {}; return
    assert torch.equal(r.visual['grid_thws'], rec['grid_thws'])
    assert torch.equal(r.visual['pixel_values'], rec['pixel_values_lut'][rec['pixel_values_u8'].long()])
    assert r.image_sizes == [tuple(i['size_wh']) for i in case['images']]
    assert r.resized_sizes == [(int(w) * 16, int(h) * 16) for _, h, w in rec['grid_thws'].tolist()]

def test_history_as_written_not_as_template():
    "vlmkit keeps an earlier assistant turn's thinking (the template drops it): the one fixture case with such a turn differs there only."
    case = next((c for c in _cases() if c['name'] == 'text_only_multiturn_system'), None)
    if case is None: pytest.skip('ovis25_cases.json absent')
    tok = load_ovis_tokenizer(require_fixture('tokenizers/qwen3_ovis25'))
    r = render_ovis(Conversation.from_messages(case['messages']), OvisProcessor(tok), thinking=False)
    text = tok.decode(r.input_ids)
    assert '<think>\nAdd them.\n</think>\n\n2+3 = 5.<|im_end|>' in text and 'literal <image> tag' in text
    assert text.replace('<think>\nAdd them.\n</think>\n\n', '').replace('<image>', '') == case['prompt_text']

def test_load_official_checkpoint_logits():
    "`load_ovis` reads the official tiny_ovis checkpoint; its forward on a rendered fixture prompt gives the official last logits."
    folder = require_fixture('ovis25/ovis25_tiny')
    root = folder.parent
    case = next(c for c in _cases() if c['name'] == 'single_rgb_odd_333x517')
    rec = torch.load(root/'ovis25_cases.pt', weights_only=True)['cases'][case['name']]
    model, proc = OVIS2_5.load(folder, dtype=torch.float32)
    assert not model.training and family_of(model) is OVIS2_5 and family_of(folder) is OVIS2_5
    proc = OvisProcessor(proc.tokenizer, case['min_pixels'], case['max_pixels'])
    r = render_ovis(Conversation.from_messages(case['messages']), proc, thinking=case['enable_thinking'], root=root)
    with torch.no_grad(): logits = model(input_ids=r.input_ids[None], **r.visual).logits[0, -1]
    torch.testing.assert_close(logits, rec['logits_last'], atol=1e-5, rtol=0)

# ---------------------------------------------------------------- prompts and training samples, both tokenizers

def _multiturn():
    return Conversation([Turn('user', [noise_image(0, (90, 60)), 'What is this?']), Turn('assistant', ['A square of noise.']),
                         Turn('user', ['And this one?', noise_image(1, (50, 120))])], system='Answer briefly.')

@pytest.mark.parametrize('which', ['tiny_ovis', 'released'])
@pytest.mark.parametrize('thinking', [True, False])
def test_multiturn_prompt_equals_official(which, thinking, request):
    proc = request.getfixturevalue('tiny_ovis')[1] if which == 'tiny_ovis' else request.getfixturevalue('real')
    conv = _multiturn()
    r = render_ovis(conv, proc, thinking=thinking)
    ids, pv, grid = proc.preprocess_inputs(conv.to_messages(text_as_str=True), enable_thinking=thinking)
    assert torch.equal(r.input_ids, ids[0]) and torch.equal(r.visual['pixel_values'], pv) and torch.equal(r.visual['grid_thws'], grid)

def test_official_template_drops_assistant_item_text(real):
    "The template's `set` inside its item loop does not outlive the loop (Jinja scoping): assistant history given as items renders empty."
    conv = Conversation([Turn('user', ['Hi']), Turn('assistant', ['Hello.']), Turn('user', ['Again'])])
    as_items = real.tokenizer.decode(real.preprocess_inputs(conv.to_messages())[0][0])
    assert '<|im_start|>assistant\n<|im_end|>' in as_items
    assert torch.equal(render_ovis(conv, real, thinking=False).input_ids, real.preprocess_inputs(conv.to_messages(text_as_str=True))[0][0])

def test_thinking_false_is_the_official_default(tiny_ovis):
    "`preprocess_inputs` defaults to enable_thinking=False: `render_ovis(..., thinking=False)`."
    _, proc = tiny_ovis
    conv = Conversation([Turn('user', [noise_image(0), 'Hi'])])
    assert torch.equal(render_ovis(conv, proc, thinking=False).input_ids, proc.preprocess_inputs(conv.to_messages())[0][0])
    assert not torch.equal(render_ovis(conv, proc).input_ids, proc.preprocess_inputs(conv.to_messages())[0][0])

def test_trajectory_with_released_tokenizer(real):
    "Masks and the prompt-prefix property hold with the released BPE tokenizer too."
    tok = real.tokenizer
    traj = Conversation([Turn('user', [noise_image(0, (300, 200)), 'Where is the cat?']),
                         Turn('assistant', ['<think>\nLook closer.\n</think>\n\n', ToolCall('crop', {'box': [0, 0, 50, 60]}, text='<tool_call>Crop [0, 0, 50, 60]</tool_call>'),
                                            ToolResult([ImageRef(noise_image(0, (300, 200)), region=(0, 0, 50, 60))]), 'Top left.'])])
    r = render_ovis(traj, real, training=True)
    assert tok.decode(r.labels[r.labels != -100]) == '<think>\nLook closer.\n</think>\n\n<tool_call>Crop [0, 0, 50, 60]</tool_call>Top left.<|im_end|>'
    assert r.labels[r.input_ids < 0].eq(-100).all()
    assert r.image_sizes == [(300, 200), (50, 60)]
    prefix = render_ovis(Conversation([traj.turns[0], Turn('assistant', traj.turns[1].content[:3])]), real)
    assert torch.equal(r.input_ids[:len(prefix)], prefix.input_ids)
    assert show_ids(tok, prefix.input_ids).endswith('</tool_call><image: 208 visual tokens>')   # 50x60 grows to 448² pixels

# ---------------------------------------------------------------- videos and bad input

def test_video_as_frames(tiny_ovis):
    model, proc = tiny_ovis
    frames = [noise_image(i, (64, 64)) for i in range(3)]
    conv = Conversation([Turn('user', [VideoRef(frames), 'What happens?'])])
    r = render_ovis(conv, proc)
    ids, pv, grid = proc.preprocess_inputs(conv.to_messages(), enable_thinking=True)
    assert torch.equal(r.input_ids, ids[0]) and torch.equal(r.visual['pixel_values'], pv)
    assert r.visual['grid_thws'].tolist() == [[3, 4, 4]] and r.image_sizes == []
    assert INDICATOR_IDS[2] in r.input_ids.tolist() and INDICATOR_IDS[3] in r.input_ids.tolist()
    with torch.no_grad(): assert model(input_ids=r.input_ids[None], **r.visual).logits.shape[1] == len(r)

def test_visual_rules(tiny_ovis, tmp_path):
    _, proc = tiny_ovis
    vid = VideoRef([noise_image(0, (64, 64))] * 2)
    with pytest.raises(ConversationError, match=r'turn 0 \(user\), part 1 \(video\).*images or one video per sample, not both'):
        render_ovis(Conversation([Turn('user', [noise_image(0), vid])]), proc)
    with pytest.raises(ConversationError, match=r'turn 2 \(user\), part 0 \(video\).*one video per sample; this conversation has 2'):
        render_ovis(Conversation([Turn('user', [vid]), Turn('assistant', ['ok']), Turn('user', [vid])]), proc)
    with pytest.raises(ConversationError, match=r'part 0 \(video\).*clip.mp4: Ovis2.5 takes a video as its frames.*save_frames'):
        render_ovis(Conversation([Turn('user', [VideoRef(str(tmp_path/'clip.mp4')), 'Hi'])]), proc)
    with pytest.raises(ConversationError, match=r'turn 0 \(user\), part 1 \(image\): .*missing.png: file not found'):
        render_ovis(Conversation([Turn('user', ['Look:', ImageRef(str(tmp_path/'missing.png'))])]), proc)
    crop = ToolResult([ImageRef(str(tmp_path/'gone.png'))])
    with pytest.raises(ConversationError, match=r'turn 1 \(assistant\), part 1 \(tool_result\), content\[0\]: '):
        render_ovis(Conversation([Turn('user', ['Hi']), Turn('assistant', [ToolCall('crop', {}), crop])]), proc)

def test_relative_paths_resolve_against_root(tiny_ovis, tmp_path):
    _, proc = tiny_ovis
    noise_image(0, (70, 50)).save(tmp_path/'a.png')
    conv = Conversation([Turn('user', [ImageRef('a.png'), 'Hi'])])
    assert torch.equal(render_ovis(conv, proc, root=tmp_path).visual['pixel_values'],
                       render_ovis(Conversation([Turn('user', [noise_image(0, (70, 50)), 'Hi'])]), proc).visual['pixel_values'])

# ---------------------------------------------------------------- batches and generation

def test_collate_text_only_and_padded_visuals(tiny_ovis):
    model, proc = tiny_ovis
    convs = [Conversation([Turn('user', ['Hi']), Turn('assistant', ['Hello.'])]),
             Conversation([Turn('user', [noise_image(0, (90, 60)), 'Hi']), Turn('assistant', ['An image.'])])]
    rendered = [render_ovis(c, proc, training=True) for c in convs]
    assert set(collate_ovis(rendered[:1])) == {'input_ids', 'position_ids', 'labels'}
    padded = collate_ovis(rendered, pack=False)
    assert padded['attention_mask'].sum().item() == sum(len(r) for r in rendered)
    assert torch.equal(padded['pixel_values'], rendered[1].visual['pixel_values'])
    with torch.no_grad(): assert torch.isfinite(model(**padded).loss)

def test_thinking_budget_matches_ovis_generate(tiny_ovis):
    "`Family.generate(..., budget=B, thinking=True)` = `vlmkit.ovis.generation.generate(enable_thinking_budget=True, thinking_budget=B)`."
    model, proc = tiny_ovis
    convs = [Conversation([Turn('user', [noise_image(4, (90, 60)), 'Describe it.'])]), Conversation([Turn('user', ['Hi'])])]
    kw = ovis_generation_kwargs(proc)
    n = 3 + len(kw['forced_ids']) + 4
    ours = OVIS2_5.generate(model, proc, convs, max_new_tokens=n, budget=3, thinking=True, return_dict_in_generate=True)
    rendered = [render_ovis(c, proc) for c in convs]
    tok = proc.tokenizer
    theirs = ovis_generate(model, [r.input_ids for r in rendered], torch.cat([r.visual['pixel_values'] for r in rendered[:1]]),
                           rendered[0].visual['grid_thws'], enable_thinking=True, enable_thinking_budget=True, thinking_budget=3,
                           max_new_tokens=n, eos_token_id=tok.convert_tokens_to_ids('<|im_end|>'), pad_token_id=tok.pad_token_id,
                           stop_ids=kw['forced_ids'], think_end_id=kw['think_end_id'], return_dict_in_generate=True)
    assert torch.equal(ours.sequences, theirs.sequences) and torch.equal(ours.kinds, theirs.kinds)
    assert ours.budget_steps == [3, 3]

def test_registry():
    assert FAMILIES['ovis2_5'] is OVIS2_5 and family_of('ovis2_5') is OVIS2_5
    assert family_of({'model_type': 'ovis2_5'}) is OVIS2_5
    assert OVIS2_5.layout.never == ('vte',) and OVIS2_5.syntax.space == 'unit'
