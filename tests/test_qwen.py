"""Qwen2.5-VL through `vlmkit.qwen`: M-RoPE positions equal the model's own for random mixes of text, images and
videos; a packed row (images of different sizes, several images in one sample, text only, a video) equals its samples
run one by one in fp32 (logits, loss, gradients; also under PEFT LoRA with gradient checkpointing, and one training
step); the sample borders are found once per forward; generation is unchanged by `enable_packing`; bad samples fail
naming the sample; a checkpoint folder loads (transformers 5 and released preprocessor configs); boxes survive
original -> resized -> Qwen text -> original within half a resized pixel."""
import functools, json, warnings
import numpy as np, pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from vlmkit.boxes import convert_boxes, format_boxes, parse_boxes
from vlmkit.testing import noise_image
from vlmkit.qwen.processing import tiny_qwen, load_qwen, resized_sizes, image_token_counts
from vlmkit.qwen.packing import rope_positions, pack_mrope, packed_lengths, enable_packing

FP32_TOL = 1e-4  # packed vs one by one, fp32 (measured: logits <= 2e-7, loss <= 5e-7, gradients <= 1e-7)
few = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

@functools.cache
def tiny():
    model, processor = tiny_qwen(0)
    return model.eval(), processor

def _labelled(x:dict) -> dict:
    cfg = tiny()[0].config
    ids = x['input_ids']
    return x | dict(labels=ids.masked_fill((ids == cfg.image_token_id) | (ids == cfg.video_token_id), -100))

def chat_sample(question:str, answer:str, images=()) -> dict:
    "Processor output of a one-turn conversation with `images`, with labels (visual tokens masked)."
    _, proc = tiny()
    msgs = [{'role': 'user', 'content': [{'type': 'image'}] * len(images) + [{'type': 'text', 'text': question}]},
            {'role': 'assistant', 'content': answer}]
    return _labelled(dict(proc(text=[proc.apply_chat_template(msgs, tokenize=False)], images=list(images) or None, return_tensors='pt')))

def video_sample(frames_t:int, h:int, w:int, seconds:float, seed:int=0) -> dict:
    "A sample with one video of grid (frames_t, h, w) patches and random pixels (video pixels need torchvision's processor)."
    model, proc = tiny()
    g = torch.Generator().manual_seed(seed)
    n = frames_t * h * w // 4
    ids = proc.tokenizer('<|im_start|>user\nClip:<|vision_start|>' + '<|video_pad|>' * n + '<|vision_end|>What moves?<|im_end|>\n'
                         '<|im_start|>assistant\nThe dots.<|im_end|>\n', return_tensors='pt')['input_ids']
    return _labelled(dict(input_ids=ids, mm_token_type_ids=2 * (ids == model.config.video_token_id).long(),
                          pixel_values_videos=torch.randn(frames_t * h * w, 3 * 2 * 14 * 14, generator=g),
                          video_grid_thw=torch.tensor([[frames_t, h, w]]), second_per_grid_ts=torch.tensor([seconds])))

@functools.cache
def samples() -> list[dict]:
    "Images of different sizes, two images in one sample, text only, a video."
    return [chat_sample('Where is the red square?', 'Top left.', [noise_image(1, (64, 64))]),
            chat_sample('Which is brighter?', 'The second one.', [noise_image(2, (200, 90)), noise_image(3, (60, 120))]),
            chat_sample('Say something.', 'Something.'),
            video_sample(3, 4, 6, 1.5),
            chat_sample('Describe.', 'Noise, mostly.', [noise_image(4, (300, 70))])]

def one_by_one(model, rows):
    "Per-sample logits and the token-weighted loss, each sample run alone with the positions the model computes itself."
    outs = [model(**s) for s in rows]
    counts = [int((s['labels'][0, 1:] != -100).sum()) for s in rows]
    return [o.logits[0] for o in outs], sum(o.loss * n for o, n in zip(outs, counts)) / sum(counts)

def max_diff(packed_logits, position_ids, ref_logits) -> float:
    return max((p - r).abs().max().item() for p, r in zip(packed_logits[0].split(packed_lengths(position_ids)), ref_logits))

# ---- positions ----
@st.composite
def mixed_sample(draw):
    "Token ids of text runs, images and videos in random order, with their grids and seconds per grid."
    model, _ = tiny()
    cfg = model.config
    ids, images, videos, seconds = [], [], [], []
    for _ in range(draw(st.integers(0, 4))):
        ids += [7] * draw(st.integers(1, 6)) + [cfg.vision_start_token_id]
        kind = draw(st.sampled_from(['image', 'video']))
        t = 1 if kind == 'image' else draw(st.integers(1, 4))
        h, w = 2 * draw(st.integers(1, 5)), 2 * draw(st.integers(1, 5))
        ids += [cfg.image_token_id if kind == 'image' else cfg.video_token_id] * (t * h * w // 4) + [cfg.vision_end_token_id]
        (images if kind == 'image' else videos).append([t, h, w])
        if kind == 'video': seconds.append(draw(st.sampled_from([0.25, 0.5, 2 / 3, 1.0, 1.5, 2.0])))
    ids += [9] * draw(st.integers(1, 6))
    as_grid = lambda g: torch.tensor(g) if g else None
    return torch.tensor([ids]), as_grid(images), as_grid(videos), torch.tensor(seconds) if seconds else None

@few
@given(mixed_sample())
def test_rope_positions_are_the_models_own(case):
    ids, images, videos, seconds = case
    model, _ = tiny()
    cfg = model.config
    kinds = (ids == cfg.image_token_id).long() + 2 * (ids == cfg.video_token_id).long()
    if images is None and videos is None: want = torch.arange(ids.shape[1]).expand(3, -1)  # the model's text-only default
    else: want = model.model.get_rope_index(ids, kinds, images, videos, seconds)[0][:, 0]
    assert torch.equal(rope_positions(ids, cfg, images, videos, seconds), want)

def test_rope_positions_ignore_the_default_dtype():
    "Video temporal positions are computed in float32 also under a bf16 default (bf16 rounds 2/3-second steps)."
    cfg = tiny()[0].config
    s = video_sample(8, 2, 2, 2 / 3)
    want = rope_positions(s['input_ids'], cfg, None, s['video_grid_thw'], s['second_per_grid_ts'])
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try: got = rope_positions(s['input_ids'], cfg, None, s['video_grid_thw'], s['second_per_grid_ts'])
    finally: torch.set_default_dtype(old)
    assert torch.equal(got, want)

# ---- packed = one by one ----
def test_packed_equals_one_by_one_fp32():
    model, _ = tiny()
    enable_packing(model)
    batch = pack_mrope(samples(), model.config)
    assert set(batch) == {'input_ids', 'position_ids', 'labels', 'pixel_values', 'image_grid_thw', 'pixel_values_videos',
                          'video_grid_thw', 'second_per_grid_ts'}
    assert batch['position_ids'].shape == (4, 1, batch['input_ids'].shape[1])
    with torch.no_grad():
        packed = model(**batch)
        ref_logits, ref_loss = one_by_one(model, samples())
    assert max_diff(packed.logits, batch['position_ids'], ref_logits) <= FP32_TOL
    assert abs(packed.loss.item() - ref_loss.item()) <= FP32_TOL

def test_packed_gradients_equal_one_by_one_fp32():
    model, _ = tiny_qwen(1)
    enable_packing(model).train()
    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    g_packed = grads(model(**pack_mrope(samples(), model.config)).loss)
    g_one = grads(one_by_one(model, samples())[1])
    assert g_packed.keys() == g_one.keys() and any('visual' in n for n in g_packed)  # the vision tower is trained too
    assert max((g_packed[n] - g_one[n]).abs().max().item() for n in g_one) <= FP32_TOL

def test_packing_without_text_row_or_varlen_leaks():
    "The two pieces are needed: [3, 1, T] positions, or transformers' SDPA, let samples attend to earlier ones."
    model, _ = tiny_qwen(0)
    batch = pack_mrope(samples()[:3], model.config)
    with torch.no_grad():
        ref = one_by_one(model, samples()[:3])[0]
        model.set_attn_implementation({'text_config': 'sdpa'})
        assert max_diff(model(**batch).logits, batch['position_ids'], ref) > 0.01
        enable_packing(model)
        three = batch | dict(position_ids=batch['position_ids'][1:])
        assert max_diff(model(**three).logits, batch['position_ids'], ref) > 0.01
        assert max_diff(model(**batch).logits, batch['position_ids'], ref) <= FP32_TOL

def test_borders_found_once_per_forward(monkeypatch):
    "The hook reads the borders once; the attention layers then never derive them from positions themselves."
    import vlmkit.attention as attention, vlmkit.packing as core_packing  # the hook takes its borders from vlmkit.packing
    model, _ = tiny()
    enable_packing(enable_packing(model))  # idempotent: one hook
    calls = {'hook': 0, 'layers': 0}
    def counted(key, f): return lambda *a, **k: (calls.__setitem__(key, calls[key] + 1), f(*a, **k))[1]
    monkeypatch.setattr(core_packing, 'cu_seqlens_from_position_ids', counted('hook', core_packing.cu_seqlens_from_position_ids))
    monkeypatch.setattr(attention, 'cu_seqlens_from_position_ids', counted('layers', attention.cu_seqlens_from_position_ids))
    with torch.no_grad(): model(**pack_mrope(samples(), model.config))
    assert calls == {'hook': 1, 'layers': 0}

def test_generation_unchanged_by_enable_packing():
    "Greedy decoding (cache, one-token steps, a left-padded batch) gives the same tokens with the packing hook as without."
    _, proc = tiny()
    texts = [proc.apply_chat_template([{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': q}]}],
                                      add_generation_prompt=True, tokenize=False) for q in ('Where?', 'What is in the picture, exactly?')]
    proc.tokenizer.padding_side = 'left'
    inputs = proc(text=texts, images=[noise_image(5, (90, 60)), noise_image(6, (40, 80))], padding=True, return_tensors='pt')
    def run(model):
        one = model.generate(**proc(text=texts[:1], images=[noise_image(5, (90, 60))], return_tensors='pt'), max_new_tokens=6, do_sample=False)
        return one, model.generate(**inputs, max_new_tokens=6, do_sample=False)
    want = run(tiny_qwen(0)[0].eval())
    got = run(enable_packing(tiny_qwen(0)[0]).eval())
    assert all(torch.equal(g, w) for g, w in zip(got, want))

def test_lora_on_packed_rows():
    "PEFT LoRA (preset 'llm', gradient checkpointing): packed = one by one still, and one AdamW step on the packed row."
    from vlmkit.lora import apply_lora, gradient_problems
    model, _ = tiny_qwen(0)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*is_gradient_checkpointing', category=FutureWarning)
        pm = enable_packing(apply_lora(model, 'llm', r=4, gradient_checkpointing=True, verbose=False))
    batch = pack_mrope(samples(), model.config)
    adapters = {n for n, p in pm.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    opt = torch.optim.AdamW([p for n, p in pm.named_parameters() if n in adapters], lr=1e-2)
    pm.train()
    loss = pm(**batch).loss
    loss.backward()
    assert gradient_problems(pm)['frozen_with_grad'] == []
    opt.step()
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= adapters
    with torch.no_grad():
        after = pm(**batch).loss
        ref = one_by_one(pm, samples())[1]
    assert after.item() < loss.item()
    assert abs(after.item() - ref.item()) <= FP32_TOL

# ---- bad samples ----
def test_bad_samples_fail_naming_the_sample():
    cfg = tiny()[0].config
    s0, s1 = samples()[0], samples()[1]
    cases = [
        ([s0, s1 | dict(image_grid_thw=s1['image_grid_thw'][:1])], "sample 1: image_grid_thw makes"),
        ([s0, s1 | dict(image_grid_thw=s1['image_grid_thw'].flip(0), pixel_values=s1['pixel_values'])], "sample 1: image 0: 10 tokens in its run, but its grid [1, 8, 4] makes 8"),
        ([s0, {k: v for k, v in s1.items() if k != 'pixel_values'}], "sample 1: pixel_values and image_grid_thw come together"),
        ([s0, {k: v for k, v in s1.items() if k != 'labels'}], "labels given for samples [0] only"),
        ([s0 | dict(attention_mask=torch.zeros_like(s0['input_ids']))], "sample 0: attention_mask has padding"),
        ([s0 | dict(input_ids=s0['input_ids'].expand(2, -1))], "sample 0: input_ids must be one sequence"),
        ([s0 | dict(labels=s0['labels'][:, 1:])], "sample 0: labels has"),
        ([], "at least one sample"),
    ]
    for rows, msg in cases:
        with pytest.raises(ValueError, match=None) as e: pack_mrope(rows, cfg)
        assert msg in str(e.value), (msg, str(e.value))

# ---- processor, loading, boxes ----
@pytest.mark.parametrize('released_config', [False, True], ids=['transformers5', 'released'])
def test_checkpoint_folder_loads(tmp_path, released_config):
    "Model and processor saved, loaded back: PIL backend, same pixel bounds, ids, pixels and logits."
    model, proc = tiny_qwen(0)   # a fresh model: the cached one has been through enable_packing (another vision attention)
    model.eval()
    model.save_pretrained(tmp_path); proc.tokenizer.save_pretrained(tmp_path); proc.image_processor.save_pretrained(tmp_path)
    if released_config:  # as the Qwen2.5-VL checkpoints write it: min_pixels / max_pixels, processor_class
        f = tmp_path/'preprocessor_config.json'
        cfg = json.loads(f.read_text())
        size = cfg.pop('size')
        f.write_text(json.dumps(cfg | dict(min_pixels=size['shortest_edge'], max_pixels=size['longest_edge'], processor_class='Qwen2_5_VLProcessor')))
    loaded, proc2 = load_qwen(tmp_path, dtype=torch.float32)
    assert type(proc2.image_processor).__name__ == 'Qwen2VLImageProcessorPil'
    assert dict(proc2.image_processor.size) == dict(proc.image_processor.size)
    s = samples()[1]
    text = proc.tokenizer.decode(s['input_ids'][0])
    again = proc2(text=[text.replace('<|image_pad|>' * 10, '<|image_pad|>', 1).replace('<|image_pad|>' * 8, '<|image_pad|>', 1)],
                  images=[noise_image(2, (200, 90)), noise_image(3, (60, 120))], return_tensors='pt')
    assert torch.equal(again['input_ids'], s['input_ids']) and torch.equal(again['pixel_values'], s['pixel_values'])
    with torch.no_grad(): assert torch.equal(loaded(**again).logits, model(**again).logits)

def test_image_placeholders_expanded():
    model, proc = tiny()
    s = samples()[1]
    assert image_token_counts(s['image_grid_thw']) == [10, 8]
    ids = s['input_ids'][0].tolist()
    start, end = proc.tokenizer.convert_tokens_to_ids(['<|vision_start|>', '<|vision_end|>'])
    spans = [ids[i + 1:ids.index(end, i)] for i, t in enumerate(ids) if t == start]
    assert [len(x) for x in spans] == [10, 8] and all(set(x) == {model.config.image_token_id} for x in spans)
    assert resized_sizes(s) == [(140, 56), (56, 112)]

@few
@given(st.integers(20, 900), st.integers(20, 900), st.data())
def test_box_round_trip_within_half_a_resized_pixel(w, h, data):
    "original pixels -> resized pixels -> Qwen JSON text -> parsed -> original pixels, through the tiny processor's real resize."
    _, proc = tiny()
    (rs,) = resized_sizes(proc.image_processor(images=[noise_image(0, (w, h))], return_tensors='pt'))
    xs = sorted(data.draw(st.lists(st.floats(0, w), min_size=2, max_size=2)))
    ys = sorted(data.draw(st.lists(st.floats(0, h), min_size=2, max_size=2)))
    box = np.array([[xs[0], ys[0], xs[1], ys[1]]])
    resized = convert_boxes(box, 'pixel', 'resized_pixel', size=(w, h), resized_size=rs)
    if np.floor(resized[0, 2] + 0.5) == np.floor(resized[0, 0] + 0.5) or np.floor(resized[0, 3] + 0.5) == np.floor(resized[0, 1] + 0.5):
        return  # too thin to survive integer rounding: format_boxes refuses empty boxes
    parsed = parse_boxes(format_boxes(resized, 'qwen2_5_vl'), 'qwen2_5_vl', resized_size=rs)
    assert parsed.rejected == []
    back = convert_boxes(parsed.boxes, 'resized_pixel', 'pixel', size=(w, h), resized_size=rs)
    bound = 0.5 * np.array([w / rs[0], h / rs[1]] * 2)
    assert (np.abs(back - box) <= bound + 1e-9).all()
