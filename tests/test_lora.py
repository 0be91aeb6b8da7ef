"""LoRA acceptance on tiny models (issue 5): per family, preset `llm` adapts every attention/MLP linear of the LLM
and nothing under the vision encoder or projector; forward+backward with gradient checkpointing gives every LoRA
parameter a nonzero gradient and frozen ones none; a reloaded adapter gives identical logits; merged logits are within
1e-5 (fp32) of the adapter model's. The remote-code-style Ovis2.5 fails with named errors before patching; the native one needs no patch."""
import warnings
import pytest, torch
from torch import nn
from peft import LoraConfig, get_peft_model
from vlmkit.testing import noise_image
from vlmkit.internvl.tiny import tiny_internvl
from vlmkit.qwen.tiny import tiny_qwen25vl
from vlmkit.ovis.remote_style import tiny_remote_ovis25
from vlmkit.lora import (apply_lora, adapted_modules, load_adapter, export_merged, gradient_problems, train_step, select_targets, diagnose,
                         LoraPatchError, LoraTargetError)

warnings.filterwarnings('ignore', category=FutureWarning)
MSGS = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Where is the red square?'}]},
        {'role': 'assistant', 'content': '<ref>red square</ref><box>[[10, 20, 300, 400]]</box>'}]
LLM_NAMES = ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj')
# Written out here, independently of vlmkit.lora.LAYOUTS, so the test checks the table rather than restating it.
PATHS = {'internvl3_5': ('model.language_model', ['model.vision_tower', 'model.multi_modal_projector']),
         'qwen2_5_vl': ('model.language_model', ['model.visual']),
         'ovis2_5': ('llm.model', ['visual_tokenizer', 'vte'])}

def native_ovis(seed=0):
    "vlmkit's native Ovis2.5 (tiny config) with a synthetic packed sample, or a skip where it is not in this checkout."
    modeling = pytest.importorskip('vlmkit.ovis.modeling')
    torch.manual_seed(seed)
    model = modeling.Ovis2_5ForConditionalGeneration(modeling.tiny_ovis25_config(llm=dict(vocab_size=300))).eval()
    s = modeling.random_sample((8, 8), 12, vocab=300, generator=torch.Generator().manual_seed(1))
    return model, dict(input_ids=s['input_ids'], attention_mask=torch.ones_like(s['input_ids']), pixel_values=s['pixel_values'], grid_thws=s['grid_thws'])

def build(name, seed=0):
    "(model, inputs) for a family: the tiny model and one chat sample with an image."
    if name == 'native_ovis': return native_ovis(seed)
    vlm = {'internvl3_5': tiny_internvl, 'qwen2_5_vl': tiny_qwen25vl, 'remote_ovis': tiny_remote_ovis25}[name](seed)
    return vlm.model, vlm.inputs(MSGS, [noise_image(1, (64, 64))])

FAMILIES = ['internvl3_5', 'qwen2_5_vl', 'remote_ovis', 'native_ovis']
def family_of(name): return 'ovis2_5' if 'ovis' in name else name

@pytest.mark.parametrize('name', FAMILIES)
def test_llm_preset_targets_exactly_the_llm_linears(name):
    model, _ = build(name)
    decoder, elsewhere = PATHS[family_of(name)]
    want = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(decoder + '.layers.') and n.endswith(LLM_NAMES)}
    assert len(want) == 7 * 2
    pm = apply_lora(model, 'llm', r=4, verbose=False)
    got = {n.removeprefix('base_model.model.') for n, m in pm.named_modules() if hasattr(m, 'lora_A') and len(m.lora_A)}
    assert got == want
    assert not [n for n in got if any(n.startswith(p) for p in elsewhere)]
    # the vision tower does have modules with the LLM's short names: only the path keeps them out
    short = {n.rsplit('.', 1)[-1] for n in want}
    assert name == 'qwen2_5_vl' or any(n.rsplit('.', 1)[-1] in short for n, _ in model.named_modules() if n.startswith(elsewhere[0]))

@pytest.mark.parametrize('name', FAMILIES)
def test_checkpointed_backward_reload_and_merge(name, tmp_path):
    model, inp = build(name)
    pm = apply_lora(model, 'llm', r=4, gradient_checkpointing=True, verbose=False)
    assert any(getattr(m, 'gradient_checkpointing', False) for m in pm.modules())
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    train_step(pm, inp, opt); opt.zero_grad()  # B starts at 0: after one step every A sees a gradient too
    train_step(pm, inp, opt)
    assert gradient_problems(pm) == dict(lora_without_grad=[], frozen_with_grad=[])
    pm.eval()
    with torch.no_grad(): ref = pm(**inp).logits
    pm.save_pretrained(tmp_path/'adapter')
    back = load_adapter(build(name)[0], tmp_path/'adapter').eval()
    with torch.no_grad(): assert torch.equal(back(**inp).logits, ref)
    merged = pm.merge_and_unload().eval()
    with torch.no_grad(): assert (merged(**inp).logits - ref).abs().max().item() < 1e-5
    assert not [n for n, _ in merged.named_parameters() if 'lora_' in n]

@pytest.mark.parametrize('name', ['internvl3_5', 'qwen2_5_vl'])
def test_export_merged_loads_with_the_family_loader(name, tmp_path):
    from transformers import AutoTokenizer, AutoImageProcessor, AutoModelForImageTextToText
    vlm = {'internvl3_5': tiny_internvl, 'qwen2_5_vl': tiny_qwen25vl}[name]()
    inp = vlm.inputs(MSGS, [noise_image(1, (64, 64))])
    pm = apply_lora(vlm.model, 'llm', r=4, verbose=False)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2): train_step(pm, inp, opt); opt.zero_grad()
    pm.eval()
    with torch.no_grad(): ref = pm(**inp).logits
    merged = export_merged(pm, tmp_path, vlm.tokenizer, vlm.image_processor).eval()
    base = {'internvl3_5': tiny_internvl, 'qwen2_5_vl': tiny_qwen25vl}[name]().model.eval()
    with torch.no_grad(): assert (base(**inp).logits - ref).abs().max() > 1e-3  # the adapter changed something
    for f in ['config.json', 'model.safetensors', 'tokenizer.json', 'chat_template.jinja', 'preprocessor_config.json']:
        assert (tmp_path/f).exists(), f
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(vlm.model)
    # the tiny models use the PIL backend; where torchvision is installed the Auto loader would pick its backend, whose
    # resize differs slightly (see the InternVL tiling notebook), so ask for the same one
    tok, ip = AutoTokenizer.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path, backend='pil')
    assert type(ip) is type(vlm.image_processor)
    assert tok.chat_template == vlm.tokenizer.chat_template
    again = type(vlm)(vlm.family, loaded, tok, ip, vlm.expand).inputs(MSGS, [noise_image(1, (64, 64))])
    assert torch.equal(again['input_ids'], inp['input_ids'])
    with torch.no_grad():
        assert torch.equal(loaded(**again).logits, merged(**inp).logits)
        assert (loaded(**again).logits - ref).abs().max().item() < 1e-5

def test_remote_ovis_fails_with_named_errors_before_patching():
    vlm = tiny_remote_ovis25()
    inp = vlm.inputs(MSGS, [noise_image(1, (64, 64))])
    with pytest.raises(NotImplementedError, match='get_input_embeddings'): vlm.model.get_input_embeddings()
    cfg = LoraConfig(r=4, target_modules=r'llm\.model\.layers\.\d+\.self_attn\.q_proj', task_type='CAUSAL_LM')
    with pytest.raises(AttributeError, match='prepare_inputs_for_generation'): get_peft_model(tiny_remote_ovis25().model, cfg)
    m = tiny_remote_ovis25().model
    m.prepare_inputs_for_generation = m.llm.prepare_inputs_for_generation
    with pytest.raises(TypeError, match="multiple values for keyword argument 'inputs_embeds'"): get_peft_model(m, cfg)(**inp)
    m = tiny_remote_ovis25().model.requires_grad_(False)
    m.llm.activation_checkpointing_enable() if hasattr(m.llm, 'activation_checkpointing_enable') else m.llm.gradient_checkpointing_enable()
    with pytest.raises(RuntimeError, match='in-place'): m.train()(**inp)
    with pytest.raises(LoraPatchError) as e: apply_lora(tiny_remote_ovis25().model, patch=False, verbose=False)
    for problem in ['input_embeddings', 'prepare_inputs_for_generation', 'inputs_embeds_kwarg', 'in_place_merge']:
        assert problem in str(e.value)
    with pytest.raises(LoraTargetError, match='visual embedding table'):
        apply_lora(tiny_remote_ovis25().model, extra=[r'vte'], verbose=False)

def test_patched_remote_ovis_merge_equals_released_merge():
    vlm = tiny_remote_ovis25(2)
    inp = vlm.inputs(MSGS + MSGS, [noise_image(1, (64, 64)), noise_image(2, (48, 80))])
    args = inp['input_ids'], inp['pixel_values'], inp['grid_thws']
    with torch.no_grad():
        ref = vlm.model.merge_multimodal(*args)
        apply_lora(vlm.model, 'llm', r=4, verbose=False)
        assert diagnose(vlm.model) == []
        assert torch.equal(vlm.model.merge_multimodal(*args), ref)

def test_native_ovis_needs_no_patch_and_generates_through_peft():
    "The native model: nothing to diagnose, nothing bound to the instance; PeftModel.generate uses the adapters."
    from transformers import DynamicCache
    from vlmkit.ovis.generation import generate
    model, inp = native_ovis()
    assert diagnose(model) == []
    pm = apply_lora(model, 'llm', r=4, patch=False, verbose=False)  # patch=False raises LoraPatchError if anything needed fixing
    assert not {'forward', 'prepare_inputs_for_generation', 'get_input_embeddings', 'merge_multimodal'} & set(vars(model))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-1)
    for _ in range(3): train_step(pm, inp, opt); opt.zero_grad()
    pm.eval()
    images = dict(pixel_values=inp['pixel_values'], grid_thws=inp['grid_thws'])
    kw = dict(enable_thinking=False, max_new_tokens=6, eos_token_id=[], pad_token_id=0)
    got = pm.generate(input_ids=inp['input_ids'], **images, **kw)
    # PEFT's step interface (its prepare_inputs_for_generation around the model's, its forward passing inputs_embeds=None)
    ids, mask, cache = inp['input_ids'], inp['attention_mask'], DynamicCache(config=model.config.get_text_config())
    for _ in range(6):
        with torch.no_grad(): logits = pm(**pm.prepare_inputs_for_generation(ids, past_key_values=cache, attention_mask=mask, **images)).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(ids[:, inp['input_ids'].shape[1]:], got)
    with pm.disable_adapter(): base = pm.generate(input_ids=inp['input_ids'], **images, **kw)
    merged = pm.merge_and_unload().eval()
    assert torch.equal(generate(merged, inp['input_ids'], **images, **kw), got)
    assert not torch.equal(base, got)  # the adapters took part

@pytest.mark.parametrize('preset', ['llm+projector', 'all'])
def test_native_ovis_projector_adapters_take_part(preset):
    "Every adapter of the native Ovis2.5 gets a gradient, the visual head's included: its padded matmul must not bypass LoRA."
    model, inp = native_ovis()
    pm = apply_lora(model, preset, r=4, verbose=False)
    assert 'visual_tokenizer.head.0' in adapted_modules(pm)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    train_step(pm, inp, opt); opt.zero_grad()  # B starts at 0: after one step every A sees a gradient too
    train_step(pm, inp, opt)
    assert gradient_problems(pm) == dict(lora_without_grad=[], frozen_with_grad=[])

@pytest.mark.parametrize('name', ['internvl3_5', 'qwen2_5_vl', 'remote_ovis'])
def test_presets_partition_the_model(name):
    model, _ = build(name)
    parts = {p: set(select_targets(model, p)) for p in ['llm', 'llm+vision', 'llm+projector', 'all']}
    vision, proj = parts['llm+vision'] - parts['llm'], parts['llm+projector'] - parts['llm']
    assert vision and proj and not vision & proj
    assert parts['all'] == parts['llm'] | vision | proj
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in parts['all'])
    with pytest.raises(LoraTargetError, match='matches no module'): select_targets(model, 'llm', extra=['q_proj'])
