"""bf16 on CPU for every model family vlmkit builds: the native Ovis2.5, and transformers' InternVL3.5 and Qwen2.5-VL as
`vlmkit.testing` builds them. Each runs in three modes on the same weights and data:

* `fp32`: the reference;
* `bf16`: built in float32, then `model.to(torch.bfloat16)`;
* `bf16-default`: built *and run* under `torch.set_default_dtype(torch.bfloat16)`, as a GPU script does (every tensor
  created without a dtype, cached ones included, is bf16 there), fp32 weights loaded.

and checks a forward, a packed forward + backward (Qwen2.5-VL through `vlmkit.qwen.packing`: per-sample M-RoPE positions),
and one LoRA step (`vlmkit.lora` preset `llm`, gradient
checkpointing). Outputs are finite and close to fp32: bf16 keeps 8 significant bits (rounding error 2**-9 relative),
and through the tiny models' two vision and two language layers logits and gradients land within 1.4% of the fp32
values' largest magnitude, losses within 0.01% (measured); the tolerances are `BF16_TOL` = 5% and `BF16_LOSS_TOL` = 1%.
A tolerance cannot tell a float32 computation done in bf16 by mistake from rounding, so the native Ovis2.5's vision
path (vlmkit's code) is also checked bit for bit: a bf16 model computes the same under a bf16 default as under the
float32 one. The data (pixels, frame indices) does not depend on the default dtype either.
"""
import functools, math
from contextlib import contextmanager
import pytest, torch
from vlmkit.testing import noise_image
from vlmkit.internvl.tiny import tiny_internvl
from vlmkit.qwen.tiny import tiny_qwen25vl
from vlmkit.attention import register_varlen_attention
from vlmkit.lora import apply_lora, train_step, gradient_problems
from vlmkit.ovis.modeling import Ovis2_5, tiny_ovis25_config, random_sample, pack_samples, bicubic_weights
from vlmkit.qwen.processing import qwen_processor
from vlmkit.qwen.packing import pack_mrope, enable_packing

BF16_TOL = 0.05        # |bf16 - fp32| <= BF16_TOL * max|fp32| for logits and gradients (measured: <= 1.4%)
BF16_LOSS_TOL = 0.01   # |bf16 - fp32| <= BF16_LOSS_TOL * fp32 for losses (measured: <= 0.01%)
MODES = ['fp32', 'bf16', 'bf16-default']
FAMILIES = ['ovis2_5', 'internvl3_5', 'qwen2_5_vl']
MSGS = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Where is the red square?'}]},
        {'role': 'assistant', 'content': '<ref>red square</ref><box>[[10, 20, 300, 400]]</box>'}]
TEXT_ONLY = [{'role': 'user', 'content': 'Say something.'}, {'role': 'assistant', 'content': 'Something.'}]

@contextmanager
def dtype_mode(mode:str):
    "The default dtype of `mode` within the block, float32 restored after (also when the block fails)."
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if mode == 'bf16-default' else torch.float32)
    try: yield
    finally: torch.set_default_dtype(old)

@pytest.fixture(autouse=True)
def _default_dtype_restored():
    yield
    assert torch.get_default_dtype() == torch.float32, "a test left the default dtype changed"

@pytest.fixture(autouse=True)
def _cold_position_cache():
    "Ovis's position matrices are cached per size: cleared, so none made under one default dtype is served under the other."
    bicubic_weights.cache_clear()

# ---- the three families: model builders and their data (built once, in float32) ----
def _ovis_model(): torch.manual_seed(0); return Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300)))

@functools.cache
def _vlm(family): return {'internvl3_5': tiny_internvl, 'qwen2_5_vl': tiny_qwen25vl}[family](0)

def new_model(family:str) -> torch.nn.Module:
    "A fresh tiny model of `family` in the current default dtype (random weights: load the reference ones after)."
    return _ovis_model() if family == 'ovis2_5' else type(_vlm(family).model)(_vlm(family).model.config)

def _labelled(inputs:dict, image_token_id=None) -> dict:
    "`inputs` with labels: every text token (visual placeholders, negative ids in Ovis, masked with -100)."
    ids = inputs['input_ids']
    visual = (ids < 0) if image_token_id is None else (ids == image_token_id)
    return inputs | dict(labels=ids.clamp(min=0).masked_fill(visual, -100))

@functools.cache
def samples(family:str) -> list[dict]:
    "Labelled samples with images of different sizes, and a text-only one; the first is the single-forward input."
    if family == 'ovis2_5':
        g = torch.Generator().manual_seed(1)
        out = [random_sample(hw, n, vocab=300, generator=g, labelled=True) for hw, n in [((8, 12), 12), ((12, 8), 20), ((8, 8), 9), (None, 15)]]
        return [{k: v for k, v in s.items() if v is not None} for s in out]
    vlm = _vlm(family)
    image_id = vlm.model.config.image_token_id
    inputs = _qwen_inputs if family == 'qwen2_5_vl' else vlm.inputs
    out = [_labelled(inputs(MSGS, [noise_image(i, size)]), image_id) for i, size in [(1, (64, 64)), (2, (120, 60))]]
    return out + [_labelled(inputs(TEXT_ONLY), image_id)]

def _qwen_inputs(messages, images=()) -> dict:
    "transformers' Qwen2.5-VL processor output (with `mm_token_type_ids`, so the model computes its 3-D positions itself)."
    vlm = _vlm('qwen2_5_vl')
    proc = qwen_processor(vlm.image_processor, vlm.tokenizer)
    return dict(proc(text=[proc.apply_chat_template(messages, tokenize=False)], images=list(images) or None, return_tensors='pt'))

def pack(family:str, rows:list[dict]) -> dict:
    "One padding-free row with per-sample position ids: `pack_samples` for Ovis, `pack_mrope` for Qwen2.5-VL, Ovis's layout for InternVL."
    if family == 'ovis2_5': return {k: v for k, v in pack_samples(rows).items() if k != 'seq_lens'}
    if family == 'qwen2_5_vl': return pack_mrope(rows, _vlm(family).model.config)
    labels = [r['labels'][0].clone() for r in rows]
    for l in labels: l[0] = -100  # no sample is trained to follow the previous one
    return dict(input_ids=torch.cat([r['input_ids'][0] for r in rows])[None], labels=torch.cat(labels)[None],
                position_ids=torch.cat([torch.arange(r['input_ids'].shape[1]) for r in rows])[None],
                pixel_values=torch.cat([r['pixel_values'] for r in rows if 'pixel_values' in r]))

def packable(family:str, model):
    "`model` set up for packed rows (Ovis: always; InternVL: its LLM through vlmkit's varlen attention; Qwen2.5-VL: `enable_packing`)."
    if family == 'qwen2_5_vl': return enable_packing(model)
    if family == 'internvl3_5': model.set_attn_implementation({'text_config': register_varlen_attention()})
    return model

def train_labels(inputs):
    "The labels `vlmkit.lora.train_step` trains on: every next token, negative (Ovis placeholder) ids masked."
    ids = inputs['input_ids']
    return ids.clamp(min=0).masked_fill(ids < 0, -100)

def single(family): return {k: v for k, v in samples(family)[0].items() if k != 'labels'}

@functools.cache
def reference(family:str) -> dict:
    "fp32 weights and outputs: single-forward logits, packed loss and gradients, and the loss of the first LoRA step."
    model = new_model(family).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = single(family)
    with torch.no_grad():
        logits = model(**inputs).logits
        lora_loss = model(**inputs, labels=train_labels(inputs)).loss.item()  # LoRA starts as the identity (B = 0)
    model = packable(family, model).train()
    loss = model(**pack(family, samples(family))).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return dict(state=state, logits=logits, lora_loss=lora_loss, packed_loss=loss.item(), grads=grads)

def build(family:str, mode:str) -> torch.nn.Module:
    "The reference weights in a model of `mode` (call inside `dtype_mode(mode)`)."
    model = new_model(family)
    model.load_state_dict(reference(family)['state'])
    return model.to(torch.bfloat16) if mode == 'bf16' else model

def assert_close(got:torch.Tensor, ref:torch.Tensor, mode:str, what:str):
    "Finite, and within BF16_TOL (bf16 modes) or 1e-5 (fp32) of the fp32 tensor's largest magnitude."
    assert torch.isfinite(got).all(), f"{what}: not finite"
    err, scale = (got.float() - ref.float()).abs().max().item(), ref.abs().max().item()
    tol = (1e-5 if mode == 'fp32' else BF16_TOL) * scale
    assert err <= tol, f"{what}: max |{mode} - fp32| = {err:.3g} > {tol:.3g} ({err / scale:.1%} of max |fp32| = {scale:.3g})"

def want_dtype(mode): return torch.float32 if mode == 'fp32' else torch.bfloat16

# ---- the tests ----
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('family', FAMILIES)
def test_forward(family, mode):
    with dtype_mode(mode):
        model = build(family, mode).eval()
        assert {p.dtype for p in model.parameters()} == {want_dtype(mode)}
        with torch.no_grad(): logits = model(**single(family)).logits
    assert logits.dtype == want_dtype(mode)
    assert_close(logits, reference(family)['logits'], mode, f"{family} logits")

@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('family', FAMILIES)
def test_packed_forward_backward(family, mode):
    "Samples with images of different sizes and a text-only one in one padding-free row: loss as one by one, gradients as fp32."
    ref = reference(family)
    with dtype_mode(mode):
        model = packable(family, build(family, mode)).train()
        loss = model(**pack(family, samples(family))).loss
        loss.backward()
        with torch.no_grad():  # the same loss one sample at a time, token-weighted
            counts = [int((s['labels'][0, 1:] != -100).sum()) for s in samples(family)]
            one_by_one = sum(model(**s).loss.item() * n for s, n in zip(samples(family), counts)) / sum(counts)
    tol = 1e-5 if mode == 'fp32' else BF16_LOSS_TOL
    assert math.isfinite(loss.item()) and abs(loss.item() - ref['packed_loss']) <= tol * ref['packed_loss']
    assert abs(loss.item() - one_by_one) <= tol * one_by_one, (loss.item(), one_by_one)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref['grads'].keys()
    assert all(g.dtype == want_dtype(mode) for g in grads.values())
    # all gradients as one vector: single tensors with tiny gradients (a bias) carry bf16's rounding alone
    assert_close(torch.cat([g.float().flatten() for g in grads.values()]), torch.cat([g.flatten() for g in ref['grads'].values()]),
                 mode, f"{family} packed gradients")

@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('family', FAMILIES)
def test_lora_step(family, mode):
    "`apply_lora` (fp32 adapters by PEFT's default; the GPU benchmark's bf16 adapters under a bf16 default), one AdamW step."
    inputs = single(family)
    with dtype_mode(mode):
        model = build(family, mode)
        pm = apply_lora(model, 'llm', r=4, gradient_checkpointing=True, autocast_adapter_dtype=mode != 'bf16-default', verbose=False)
        adapters = {n for n, p in pm.named_parameters() if p.requires_grad}
        assert adapters and all('lora_' in n for n in adapters)
        assert {p.dtype for n, p in pm.named_parameters() if n in adapters} == {torch.bfloat16 if mode == 'bf16-default' else torch.float32}
        before = {n: p.detach().clone() for n, p in pm.named_parameters()}
        opt = torch.optim.AdamW([p for n, p in pm.named_parameters() if n in adapters], lr=1e-2)
        loss = train_step(pm, inputs, opt)
        assert gradient_problems(pm)['frozen_with_grad'] == []
        with torch.no_grad(): after = pm(**inputs, labels=train_labels(inputs)).loss.item()
    ref = reference(family)['lora_loss']
    tol = 1e-5 if mode == 'fp32' else BF16_LOSS_TOL
    assert math.isfinite(loss) and abs(loss - ref) <= tol * ref, (loss, ref)
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= adapters, f"the step changed frozen weights: {sorted(changed - adapters)[:3]}"
    assert {n for n in adapters if 'lora_B' in n} <= changed  # every B moved off zero
    assert after < loss, (loss, after)  # the step was not lost to rounding

@pytest.mark.parametrize('packed', [False, True], ids=['single', 'packed'])
def test_ovis_vision_path_ignores_the_default_dtype(packed):
    "Visual features and merged embeddings of a bf16 Ovis2.5 are bit-identical under a bf16 and a float32 default dtype."
    batch = pack('ovis2_5', samples('ovis2_5')) if packed else single('ovis2_5')
    args = batch['input_ids'], batch['pixel_values'], batch['grid_thws']
    def run():
        model = build('ovis2_5', 'bf16')
        with torch.no_grad(): return model.visual_tokenizer.encode(*args[1:]), model.merge_multimodal(*args)
    with dtype_mode('bf16-default'): got = run()   # first: the position matrices are made under the bf16 default
    want = run()
    for w, g in zip(want, got): assert g.dtype == w.dtype == torch.bfloat16 and torch.equal(g, w)

# ---- preprocessing: the data a bf16 model gets does not depend on the default dtype ----
def _ovis_pixels():
    from vlmkit.ovis.preprocessing import preprocess
    return preprocess(noise_image(4, (300, 200)), min_pixels=64 * 64, max_pixels=160 * 160)[0]

def _internvl_tiles():
    from vlmkit.internvl.tiling import load_image
    return load_image(noise_image(5, (300, 120)), input_size=56, max_num=4)

def _internvl_reference_tiles():
    from vlmkit.internvl.tiling import tiles_reference
    return tiles_reference(noise_image(5, (300, 120)), image_size=56, max_num=4)

def _video_frames():
    from vlmkit.video import get_index_hf
    return torch.from_numpy(get_index_hf(3000, 32))

@pytest.mark.parametrize('make', [_ovis_pixels, _internvl_tiles, _internvl_reference_tiles, _video_frames], ids=lambda f: f.__name__[1:])
def test_preprocessing_ignores_the_default_dtype(make):
    "Pixels stay float32 and bit-identical, frame indices identical, when a GPU script has set a bf16 default dtype."
    want = make()
    with dtype_mode('bf16-default'): got = make()
    assert got.dtype == want.dtype and torch.equal(got, want)

def text_checksum(prompts, completions, **columns) -> list[float]: return [float(sum(map(ord, c)) % 97) for c in completions]

@pytest.mark.parametrize('family', FAMILIES)
def test_trainers_in_bf16(family, tmp_path):
    """`vlmkit sft` and `vlmkit grpo` with `bf16: true` (their default; a GPU run's setting): bf16 weights, LoRA adapters, the
    Trainer's mixed precision, whose wrapper hands the loss float32 hidden states. A step of each trains and changes the adapter."""
    from vlmkit.family import FAMILIES as FAMILY_OF_NAME
    from vlmkit.grpo import GRPOConfig, grounding_prompts, grpo_trainer
    from vlmkit.sft import SFTConfig, prepare_model, sft
    from vlmkit.tour import TourSettings, tour_data
    data = tour_data(tmp_path/'data', TourSettings(family=family, sft_samples=4))
    trainer = sft(SFTConfig(family=family, model='tiny', train=[str(data['sft'])], output_dir=str(tmp_path/'sft'), bf16=True,
                            max_steps=1, report_to='none', progress=False))
    losses = [h['train_loss'] for h in trainer.state.log_history if 'train_loss' in h]
    assert trainer.args.bf16 and len(losses) == 1 and math.isfinite(losses[0]), trainer.state.log_history
    assert {p.dtype for n, p in trainer.model.named_parameters() if 'lora_' not in n} == {torch.bfloat16}
    assert any(p.abs().max() > 0 for n, p in trainer.model.named_parameters() if 'lora_B' in n), "the SFT step left every lora_B at zero"
    fam = FAMILY_OF_NAME[family]
    model, proc = fam.tiny()
    cfg = GRPOConfig(family=family, output_dir=str(tmp_path/'grpo'), group_size=2, prompts_per_step=1, max_new_tokens=8, max_tool_calls=1,
                     max_steps=1, save_steps=1000, bf16=True, report_to='none', progress=False, lora_r=4, train=['(in memory)'],
                     rewards={text_checksum: 1.0})   # two different completions: no group is all ties
    policy = prepare_model(model.to(torch.bfloat16).train(), fam, cfg, verbose=False)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    trainer = grpo_trainer(cfg, policy, fam, proc, grounding_prompts(fam, proc, n=1))
    trainer.train()
    logged = next(h for h in trainer.state.log_history if 'time/training' in h)
    assert math.isfinite(logged['loss']) and logged['tokens'] > 0, logged
    assert any(not torch.equal(p, before[n]) for n, p in policy.named_parameters() if n in before), f"the GRPO step changed no adapter weight: {logged}"


@pytest.mark.parametrize('mode', ['bf16', 'bf16-default'])
def test_shared_prompt_read_in_bf16(mode):
    """A decode step's attention with each group's prompt read once, in chunks (`vlmkit.attention.shared_prefix_attention` on
    PyTorch's fused kernels, what a CPU or a GPU without Triton runs; its Triton kernel's bf16 is checked on a GPU, in
    04_attention's GPU cell): bf16 inputs, also under a bf16 default, within bf16's rounding of float32 SDPA over every
    row's whole cache; a left-padded prompt and unfilled slots masked."""
    import torch.nn.functional as F
    from vlmkit.attention import prompt_chunks, shared_prefix_attention
    g = torch.Generator().manual_seed(0)
    B, group, slots, S = 4, 2, 256, 300
    q = torch.randn(B, 4, 1, 16, generator=g)
    k, v = (torch.randn(B, 2, S, 16, generator=g) for _ in range(2))
    for t in (k, v): t[:, :, :slots] = t[::group, :, :slots].repeat_interleave(group, 0)
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool); mask[:group, ..., :70] = False; mask[..., 290:] = False
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    assert prompt_chunks(slots) == 4
    with dtype_mode(mode): got = shared_prefix_attention(*(t.bfloat16() for t in (q, k, v)), mask, group, slots)
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape and bool(got.isfinite().all())
    assert (got.float() - ref).abs().max() <= BF16_TOL * ref.abs().max()
