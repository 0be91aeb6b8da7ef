"""`vlmkit.qwen.family.QWEN2_5_VL`: prompts render to the ids, pixels, grids and token types of transformers' processor
over the released chat template (tiny tokenizer; a real Qwen BPE where the fixtures are); training labels train only
the assistant's text and `<|im_end|>` (a crop-tool trajectory's prompt is a prefix of its training ids); a packed row
equals its samples run one by one and its loss the padded batch's; batched generation equals one by one; `family_of`
finds the family; videos go through transformers' video processor where torchvision is installed and fail by name
where it is not."""
import functools, importlib.util
import pytest, torch
from vlmkit.conversation import Conversation, ConversationError, ImageRef, ToolCall, ToolResult, Turn, VideoRef
from vlmkit.family import FAMILIES, Rendered, family_of
from vlmkit.testing import noise_image, require_fixture
from vlmkit.qwen.family import QWEN_CHAT_TEMPLATE, QWEN2_5_VL, collate_qwen, render_qwen, tiny_qwen_released
from vlmkit.qwen.processing import qwen_processor, tiny_qwen

@functools.cache
def tiny_pair():
    return tiny_qwen_released(0)

def official(processor, conv:Conversation, images=(), **kw) -> dict:
    "transformers' path: the processor's chat template over `conv`'s messages, then the processor over text and images."
    text = processor.apply_chat_template(conv.to_messages(), tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=list(images) or None, return_tensors='pt', **kw)

def assert_same(r:Rendered, off:dict):
    assert torch.equal(r.input_ids, off['input_ids'][0])
    assert torch.equal(r.row['mm_token_type_ids'], off['mm_token_type_ids'][0])
    for k in ('pixel_values', 'image_grid_thw', 'pixel_values_videos', 'video_grid_thw', 'second_per_grid_ts'):
        assert (k in r.visual) == (off.get(k) is not None), k
        if k in r.visual: assert torch.equal(r.visual[k], torch.as_tensor(off[k])), k

def trained_text(tokenizer, r:Rendered) -> str:
    return tokenizer.decode(r.labels[r.labels != -100])

A, B, C = noise_image(1, (200, 90)), noise_image(2, (60, 120)), noise_image(3, (64, 64))
TWO_IMAGES = Conversation([Turn('user', [A, B, 'Which is brighter?'])])
MULTI_TURN = Conversation([Turn('user', [A, 'What is this?']), Turn('assistant', ['Noise.']), Turn('user', [C, 'And this?'])])

# ---- 1. prompts equal the official path ----
@pytest.mark.parametrize('conv,images', [(TWO_IMAGES, [A, B]), (MULTI_TURN, [A, C])], ids=['two_images', 'multi_turn'])
def test_prompt_equals_processor(conv, images):
    _, proc = tiny_pair()
    r = render_qwen(conv, proc)
    assert_same(r, official(proc, conv, images))
    assert r.labels is None and r.image_sizes == [im.size for im in images]

def test_prompt_equals_processor_with_the_tiny_tokenizer_template():
    "The tiny tokenizer's own (simplified) template writes no default system prompt: equal when the conversation brings one."
    _, proc = tiny_qwen(0)
    conv = Conversation(TWO_IMAGES.turns, system='Be brief.')
    assert_same(render_qwen(conv, proc), official(proc, conv, [A, B]))

def test_prompt_equals_processor_with_a_real_qwen_bpe():
    """No Qwen2.5-VL tokenizer is among the fixtures; the released Qwen3 tokenizer of the Ovis2.5 fixture has the same
    byte-level BPE and the same vision, ChatML and tool-call token ids (151643..151664), so it checks real merges."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(require_fixture('tokenizers/qwen3_ovis25')))
    proc = qwen_processor(tiny_pair()[1].image_processor, tok, chat_template=QWEN_CHAT_TEMPLATE)
    conv = Conversation([Turn('user', [A, 'Where is the cat?\n Answer with a box, e.g. {"bbox_2d": [1, 2, 3, 4]}.  ', B, ' ok'])])
    assert_same(render_qwen(conv, proc), official(proc, conv, [A, B]))
    full = Conversation(conv.turns + (Turn('assistant', ['It is at {"bbox_2d": [10, 20, 30, 40]}.']),))
    t = render_qwen(full, proc, training=True)
    text = proc.apply_chat_template(full.to_messages(), tokenize=False)
    assert torch.equal(t.input_ids, proc(text=[text], images=[A, B], return_tensors='pt')['input_ids'][0])
    assert trained_text(tok, t) == 'It is at {"bbox_2d": [10, 20, 30, 40]}.<|im_end|>'

# ---- 2. training labels ----
def test_training_labels_train_only_the_answer():
    _, proc = tiny_pair()
    conv = Conversation([Turn('user', [A, 'Where is the red square?']), Turn('assistant', ['Top left.']),
                         Turn('user', ['Sure?']), Turn('assistant', ['Yes.'])], system='Look carefully.')
    t = render_qwen(conv, proc, training=True)
    assert trained_text(proc.tokenizer, t) == 'Top left.<|im_end|>Yes.<|im_end|>'
    assert t.labels[t.row['mm_token_type_ids'] > 0].eq(-100).all()
    trained = t.labels != -100
    assert torch.equal(t.labels[trained], t.input_ids[trained])
    assert proc.tokenizer.decode(t.input_ids[~trained]).count('<|im_start|>assistant\n') == 2   # role headers masked

def test_crop_trajectory_masks_the_crop_and_prefix_equals_prompt():
    _, proc = tiny_pair()
    call = ToolCall('crop', {'box': [20, 10, 120, 80]}, text='<tool_call>Crop [20, 10, 120, 80]</tool_call>')
    crop = ImageRef(A, region=(20, 10, 120, 80))
    traj = Conversation([Turn('user', [A, 'Where is the cat?']),
                         Turn('assistant', ['Let me look. ', call, ToolResult([crop]), 'At the left.'])])
    t = render_qwen(traj, proc, training=True)
    assert trained_text(proc.tokenizer, t) == 'Let me look. <tool_call>Crop [20, 10, 120, 80]</tool_call>At the left.<|im_end|>'
    n_crop = int(t.visual['image_grid_thw'][1].prod()) // 4
    crop_pads = t.row['mm_token_type_ids'].nonzero().flatten()[-n_crop:]
    assert t.labels[crop_pads].eq(-100).all() and t.image_sizes == [(200, 90), (100, 70)]
    prompt = render_qwen(Conversation([traj.turns[0], Turn('assistant', traj.turns[1].content[:3])]), proc)
    assert torch.equal(t.input_ids[:len(prompt)], prompt.input_ids)
    assert torch.equal(t.positions[:, :len(prompt)], prompt.positions)
    assert torch.equal(t.visual['pixel_values'], prompt.visual['pixel_values'])
    assert t.input_ids[len(prompt)] != proc.tokenizer.convert_tokens_to_ids('<|im_end|>')   # the prompt leaves the turn open

def test_bad_input_is_named():
    _, proc = tiny_pair()
    with pytest.raises(ConversationError, match=r'turn 2 \(user\), part 1 \(image\): nowhere/x.png: file not found'):
        render_qwen(Conversation([Turn('user', [A, 'a']), Turn('assistant', ['b']), Turn('user', ['c', ImageRef('x.png')])]), proc, root='nowhere')
    with pytest.raises(ConversationError, match=r'turn 0 \(user\), part 0 \(text\): the text holds <\|vision_start\|>'):
        render_qwen(Conversation([Turn('user', ['<|vision_start|>hi'])]), proc)
    with pytest.raises(ValueError, match='sample 1: no M-RoPE positions'):
        r = render_qwen(TWO_IMAGES, proc)
        collate_qwen([r, Rendered(r.input_ids, None, r.visual, r.row)])

# ---- 3. packed = one by one, loss = padded loss ----
def test_packed_equals_one_by_one_and_padded_loss():
    proc = tiny_pair()[1]
    model = QWEN2_5_VL.enable_packing(tiny_qwen_released(0)[0].float())
    samples = [render_qwen(Conversation([Turn('user', [A, 'Where is the square?']), Turn('assistant', ['Top left.'])]), proc, training=True),
               render_qwen(Conversation([Turn('user', [B, 'And here?']), Turn('assistant', ['Nowhere at all.'])]), proc, training=True),
               render_qwen(Conversation([Turn('user', ['Say something.']), Turn('assistant', ['Something.'])]), proc, training=True)]
    assert samples[0].resized_sizes != samples[1].resized_sizes
    with torch.no_grad():
        packed = model(**QWEN2_5_VL.collate(samples, pack=True))
        padded = model(**QWEN2_5_VL.collate(samples, pack=False))
        alone = [model(**QWEN2_5_VL.collate([s], pack=False)).logits[0] for s in samples]
    for p, a in zip(packed.logits[0].split([len(s) for s in samples]), alone):
        assert (p - a).abs().max() < 1e-4
    assert abs(packed.loss.item() / padded.loss.item() - 1) < 1e-5

# ---- 4. generation ----
def test_generate_batched_equals_alone():
    model, proc = tiny_pair()
    prompts = [TWO_IMAGES, Conversation([Turn('user', [C, 'Describe this picture in a few words, please.'])])]
    assert len(render_qwen(prompts[0], proc)) != len(render_qwen(prompts[1], proc))
    together = QWEN2_5_VL.generate(model, proc, prompts, max_new_tokens=5)
    for c, row in zip(prompts, together):
        assert torch.equal(row, QWEN2_5_VL.generate(model, proc, [c], max_new_tokens=5)[0])

# ---- loading ----
def test_load_a_checkpoint_folder(tmp_path):
    model, proc = tiny_pair()
    model.save_pretrained(tmp_path); proc.tokenizer.save_pretrained(tmp_path); proc.image_processor.save_pretrained(tmp_path)
    loaded, lproc = QWEN2_5_VL.load(tmp_path, dtype=torch.float32)
    assert not loaded.training and loaded.dtype == torch.float32
    r, lr = render_qwen(TWO_IMAGES, proc), render_qwen(TWO_IMAGES, lproc, tokens_per_second=loaded.config.vision_config.tokens_per_second)
    assert torch.equal(r.input_ids, lr.input_ids) and torch.equal(r.visual['pixel_values'], lr.visual['pixel_values'])
    with torch.no_grad(): assert torch.equal(model(**collate_qwen([r])).logits, loaded(**collate_qwen([lr])).logits)

# ---- 5. family_of ----
@pytest.fixture
def present_families(monkeypatch):
    "The registry as far as this checkout has the family packages (all three once they are merged)."
    present = {k: v for k, v in FAMILIES.sources.items() if importlib.util.find_spec(v.split(':')[0]) is not None}
    monkeypatch.setattr(FAMILIES, 'sources', present)

def test_family_of(present_families, tmp_path):
    model, _ = tiny_pair()
    assert family_of('qwen2_5_vl') is QWEN2_5_VL
    assert family_of(model) is QWEN2_5_VL
    assert family_of(model.config) is QWEN2_5_VL
    model.config.save_pretrained(tmp_path)
    assert family_of(tmp_path) is QWEN2_5_VL
    assert family_of({'model_type': 'qwen2_5_vl'}) is QWEN2_5_VL

# ---- videos ----
def video_conv(fps=None):
    return Conversation([Turn('user', [VideoRef([noise_image(i, (60, 40)) for i in range(4)], fps=fps), 'What moves?'])])

def test_video_without_video_processor_names_torchvision():
    with pytest.raises(ConversationError, match=r'part 0 \(video\): .*needs torchvision'):
        render_qwen(video_conv(), tiny_pair()[1])

def test_video_equals_processor_and_packs():
    pytest.importorskip('torchvision', reason='transformers\' Qwen2VLVideoProcessor needs torchvision')
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    model, proc = tiny_pair()
    vp = Qwen2VLVideoProcessor(min_pixels=56*56, max_pixels=112*112, patch_size=14, merge_size=2, temporal_patch_size=2,
                               cap_pixels_per_frame=False)
    proc = qwen_processor(proc.image_processor, proc.tokenizer, vp, QWEN_CHAT_TEMPLATE)
    conv = video_conv(fps=4.0)
    frames = list(conv.turns[0].content[0].src)
    text = proc.apply_chat_template(conv.to_messages(), tokenize=False, add_generation_prompt=True)
    off = proc(text=[text], videos=[frames], video_metadata=[dict(fps=4.0, total_num_frames=4)], return_tensors='pt')
    r = render_qwen(conv, proc)
    assert_same(r, off)
    assert r.visual['second_per_grid_ts'].tolist() == [0.5]
    rope, _ = model.model.get_rope_index(off['input_ids'], off['mm_token_type_ids'], video_grid_thw=off['video_grid_thw'],
                                         second_per_grid_ts=off['second_per_grid_ts'])
    assert torch.equal(r.positions, rope[:, 0])
    samples = [render_qwen(conv.with_turn('assistant', ['Dots.']), proc, training=True),
               render_qwen(Conversation([Turn('user', [A, 'Hi']), Turn('assistant', ['Hello.'])]), proc, training=True)]
    m = QWEN2_5_VL.enable_packing(tiny_qwen_released(0)[0].float())
    with torch.no_grad():
        packed = m(**collate_qwen(samples)).logits[0].split([len(s) for s in samples])
        for p, s in zip(packed, samples): assert (p - m(**collate_qwen([s], pack=False)).logits[0]).abs().max() < 1e-4
