"""LoRA r=128 training step on the LLM with gradient checkpointing: peak GPU memory and step time of plain
transformers + PEFT against vlmkit's recipe, same card, same run, same random bf16 weights and data.

plain : `model.gradient_checkpointing_enable()`, `get_peft_model` (PEFT's default fp32 adapters), `model(..., labels).loss`.
vlmkit: `apply_lora(..., gradient_checkpointing=True, autocast_adapter_dtype=False)` (bf16 adapters, no input-grad hooks,
        so the frozen vision tower is not back-propagated) and `causal_lm_loss` (chunked cross-entropy, no [T, V] fp32 logits).
Both: AdamW on the adapters, the same LLM modules adapted (every attention and MLP linear), SDPA.

Cases: the Qwen3-8B-shaped LLM alone (4,136 tokens), Ovis2.5-9B-shaped (vlmkit's native model: Qwen3-8B + so400m NaViT,
one 1792x1792 image + 1,000 text tokens) and InternVL3.5-8B-shaped (transformers' InternVL: InternViT-300M + Qwen3-8B,
12 tiles + thumbnail + 1,000 text tokens). Every model is built and trained under `torch.set_default_dtype(torch.bfloat16)`,
as a user's GPU script would. `--tiny` (what CI runs) takes the same code, bf16 included, on CPU with tiny shapes, in seconds.
A case that fails for another reason than running out of memory makes the script exit with an error after the table.

    python bench/lora_memory_gpu.py            # on the GPU
    python bench/lora_memory_gpu.py --tiny     # CPU smoke test: same path and table, bf16, tiny shapes
    python bench/lora_memory_gpu.py --cases ovis2_5,internvl3_5   # some cases only (llm, ovis2_5, internvl3_5)
"""
import argparse, gc, json, os, time, warnings
import torch
warnings.filterwarnings('ignore')

QWEN3_8B = dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                intermediate_size=12288, vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0,
                rms_norm_eps=1e-6, tie_word_embeddings=False)
TINY_LLM = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=128, vocab_size=2000, max_position_embeddings=8192, tie_word_embeddings=False)
SHAPES = {
    'full': dict(llm=QWEN3_8B, r=128, text=1000, ovis_grid=112, visual_vocab=65536,
                 ovis_vit=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                               image_size=512, patch_size=16, hidden_stride=2, window_size=112, fullatt_block_indexes=None),
                 internvl_vit=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                   image_size=448, patch_size=14), tiles=13, tile_tokens=256),
    'tiny': dict(llm=TINY_LLM, r=8, text=40, ovis_grid=8, visual_vocab=256,
                 ovis_vit=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=128, patch_size=16, hidden_stride=2, window_size=112, fullatt_block_indexes=None),
                 internvl_vit=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=56, patch_size=14), tiles=3, tile_tokens=4),
}

def build(case, S, dev):
    "(model, inputs, labels): seeded random weights in the default dtype, built directly on `dev`; data made on the CPU."
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    V, T = S['llm']['vocab_size'], S['text']
    text = torch.randint(0, min(V, 150000), (T,), generator=g)
    to = lambda d: {k: v.to(dev) for k, v in d.items()}
    if case == 'llm':
        from transformers import Qwen3Config, Qwen3ForCausalLM
        with torch.device(dev): model = Qwen3ForCausalLM(Qwen3Config(**S['llm'], attn_implementation='sdpa'))
        ids = torch.randint(0, min(V, 150000), (1, S['ovis_grid'] ** 2 // 4 + T), generator=g)  # the Ovis case's length
        return model, to(dict(input_ids=ids, attention_mask=torch.ones_like(ids))), ids.to(dev)
    if case == 'ovis2_5':
        from vlmkit.ovis.modeling import Ovis2_5ForConditionalGeneration, tiny_ovis25_config, VISUAL_ATOM_ID, INDICATOR_IDS
        cfg = tiny_ovis25_config(llm=dict(S['llm'], max_window_layers=S['llm']['num_hidden_layers']), vit=S['ovis_vit'],
                                 visual_vocab_size=S['visual_vocab'])
        with torch.device(dev): model = Ovis2_5ForConditionalGeneration(cfg)
        h = w = S['ovis_grid']
        ids = torch.cat([text[:T // 2], torch.tensor([INDICATOR_IDS[0]]), torch.full((h * w // 4,), VISUAL_ATOM_ID),
                         torch.tensor([INDICATOR_IDS[1]]), text[T // 2:]])[None]
        pv = torch.randn(h * w, 3 * 16 * 16, generator=g).to(torch.get_default_dtype())
        inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, grid_thws=torch.tensor([[1, h, w]]))
        return model, to(inputs), ids.masked_fill(ids < 0, -100).to(dev)
    if case == 'internvl3_5':
        from transformers import InternVLConfig, InternVLForConditionalGeneration
        img_tok, start, end = V - 3, V - 2, V - 1
        cfg = InternVLConfig(vision_config=S['internvl_vit'], text_config=dict(model_type='qwen3', **S['llm']),
                             image_token_id=img_tok, image_seq_length=S['tile_tokens'], downsample_ratio=0.5)
        cfg._attn_implementation = 'sdpa'
        with torch.device(dev): model = InternVLForConditionalGeneration(cfg)
        side = S['internvl_vit']['image_size']
        ids = torch.cat([text[:T // 2], torch.tensor([start]), torch.full((S['tiles'] * S['tile_tokens'],), img_tok),
                         torch.tensor([end]), text[T // 2:]])[None]
        pv = torch.randn(S['tiles'], 3, side, side, generator=g).to(torch.get_default_dtype())
        inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv)
        return model, to(inputs), ids.masked_fill(ids == img_tok, -100).to(dev)

CASES = {'llm': 'Qwen3-8B-shaped LLM alone', 'ovis2_5': 'Ovis2.5-9B-shaped (native vlmkit)',
         'internvl3_5': 'InternVL3.5-8B-shaped (transformers)'}  # --cases value: its row's label
LLM_ALONE = r'model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)'

def recipe(name, model, S):
    "(peft model, loss function of (inputs, labels))."
    from peft import LoraConfig, get_peft_model
    from vlmkit.lora import apply_lora, select_targets, targets_regex
    from vlmkit.family import family_of
    from vlmkit.loss import causal_lm_loss
    r = S['r']
    try: family_of(model); vlm = True
    except ValueError: vlm = False  # the LLM alone
    if name == 'plain':
        targets = targets_regex(model, select_targets(model, 'llm')) if vlm else LLM_ALONE
        model.gradient_checkpointing_enable()
        # Ovis's forward(**kwargs) cannot take PEFT's causal-LM inputs_embeds=None: plain PeftModel passes kwargs through.
        task = None if hasattr(model, 'vte') else 'CAUSAL_LM'
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, task_type=task))
        return pm, lambda inp, lab: pm(**inp, labels=lab).loss
    if vlm:
        pm = apply_lora(model, 'llm', r=r, alpha=2 * r, gradient_checkpointing=True, autocast_adapter_dtype=False, verbose=False)
    else:  # no VLM layout to detect: the same recipe by hand
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, task_type='CAUSAL_LM', target_modules=LLM_ALONE),
                            autocast_adapter_dtype=False)
        pm.get_base_model().disable_input_require_grads()
    return pm, lambda inp, lab: causal_lm_loss(pm, lab, **inp)

def measure(case, name, S, dev, steps):
    cuda = dev.startswith('cuda')
    before = torch.cuda.memory_allocated() / 2**30 if cuda else 0.0  # must be ~0: the previous case is gone
    model, inputs, labels = build(case, S, dev)
    pm, loss_fn = recipe(name, model, S)
    pm.train()
    trainable = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    static = torch.cuda.memory_allocated() / 2**30 if cuda else float('nan')  # weights + adapters, before any step
    times, losses = [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = loss_fn(inputs, labels)
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        if cuda: torch.cuda.synchronize()
        times.append(time.perf_counter() - t0); losses.append(loss.item())
    out = dict(case=case, recipe=name, tokens=int(inputs['input_ids'].shape[1]), allocated_before_gib=before,
               adapter_dtype=str(trainable[0].dtype).replace('torch.', ''), lora_params=sum(p.numel() for p in trainable),
               static_gib=static, peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else float('nan'),
               s_per_step=sorted(times[1:])[len(times[1:]) // 2], first_loss=losses[0], losses=losses)
    return out

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--tiny', action='store_true')
    ap.add_argument('--cases', default=','.join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--json', default=None)
    a = ap.parse_args()
    unknown = [c for c in a.cases.split(',') if c not in CASES]
    if unknown: ap.error(f"--cases: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(CASES)}")
    S = SHAPES['tiny' if a.tiny else 'full']
    dev = 'cpu' if a.tiny or not torch.cuda.is_available() else 'cuda'
    torch.set_default_dtype(torch.bfloat16 if dev == 'cuda' or a.tiny else torch.float32)
    card = torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'
    import transformers, peft
    print(f"device: {card}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
          f"LoRA r={S['r']} on every LLM attention/MLP linear, gradient checkpointing, AdamW, median of {a.steps} steps after 1 warm-up", flush=True)
    rows = []
    for case in a.cases.split(','):
        for name in ('plain', 'vlmkit'):
            # vlmkit's remote-code fixes bind closures to the model (reference cycles): collect after every case
            try: rows.append(measure(case, name, S, dev, a.steps)); gc.collect(); torch.cuda.empty_cache() if dev == 'cuda' else None
            except Exception as e:  # report the case and go on with the others
                import traceback; traceback.print_exc()
                rows.append(dict(case=case, recipe=name, error='OOM' if isinstance(e, torch.OutOfMemoryError) else type(e).__name__))
                gc.collect(); torch.cuda.empty_cache() if dev == 'cuda' else None
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| model ({card}) | tokens | plain peak GiB | vlmkit peak GiB | peak ratio | plain s/step | vlmkit s/step | time ratio | step-1 loss plain / vlmkit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in a.cases.split(','):
        label = CASES[case]
        p, v = [next(r for r in rows if r['case'] == case and r['recipe'] == n) for n in ('plain', 'vlmkit')]
        if 'error' in p or 'error' in v:
            print(f"| {label} | | {p.get('error', round(p.get('peak_gib', 0), 1))} | {v.get('error', round(v.get('peak_gib', 0), 1))} | | | | | |"); continue
        print(f"| {label} | {p['tokens']:,} | {p['peak_gib']:.1f} | {v['peak_gib']:.1f} | {v['peak_gib']/p['peak_gib']:.2f} | "
              f"{p['s_per_step']:.2f} | {v['s_per_step']:.2f} | {v['s_per_step']/p['s_per_step']:.2f} | {p['first_loss']:.4f} / {v['first_loss']:.4f} |")
    if a.json: json.dump(dict(card=card, rows=rows), open(a.json, 'w'), indent=1)
    failed = [f"{r['case']}/{r['recipe']}: {r['error']}" for r in rows if r.get('error', 'OOM') != 'OOM']
    if failed: raise SystemExit(f"cases failed (traceback above): {', '.join(failed)}")

if __name__ == '__main__': main()
