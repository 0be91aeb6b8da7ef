"""SFT training step of every family: vlmkit's packed rows against plain transformers + PEFT, one sample at a time and
in padded batches of 4, side by side in one run, on the same data and weights.

Models (`--families`, default all three): random weights of a released model's shape, built and trained under
`torch.set_default_dtype(torch.bfloat16)`, as a user's GPU script would:

* InternVL3.5-2B-shaped: transformers' `InternVLForConditionalGeneration`, InternViT-300M + a Qwen3-1.7B LLM (tied lm_head);
* Qwen2.5-VL-3B-shaped: transformers' `Qwen2_5_VLForConditionalGeneration`, the released 3B config's numbers;
* Ovis2.5-2B-shaped: vlmkit's native model, as `bench/ovis_packed_gpu.py` builds it (so400m NaViT + Qwen3-1.7B).

Data, the same for every family and row: `--samples` seeded conversations, each a user turn with one synthetic image
(`vlmkit.images.synthetic_image`, each side 448..1792 px) and a question, then the assistant's answer; question and
answer are 200..1,500 text tokens together. Each family renders them (`fam.render(conv, processor, training=True)`:
only the answer and its `<|im_end|>` trained) with a processor of the released image settings: Qwen
`Qwen2VLImageProcessorPil` with min/max pixels 3136 / 12845056; InternVL `GotOcr2ImageProcessorPil`, 448-px tiles
(1..12 and a thumbnail), 256 tokens a tile; Ovis `OvisProcessor`, 448^2..1792^2 pixels. The tokenizer is the family's
tiny one (`fam.tiny()`): byte-level, one token per character of the ASCII text, so text lengths are exact token counts
(what a step costs); the models keep the released vocabulary (151,936 rows, so the lm_head and its cost are real) and
the tiny tokenizer's ids (< 300) are ids of it.

Rows, per family (LoRA r=64, alpha 128, on every LLM attention and MLP linear; gradient checkpointing; a pass is every
sample's forward and backward, gradients accumulated, then one AdamW step with lr 0, so that its time and state count
and the weights stay those every row starts from):

1. plain, one at a time: `model.gradient_checkpointing_enable()`, PEFT's `get_peft_model` (its default fp32 adapters),
   SDPA in the LLM, batch 1, `model(**batch).loss` (transformers' loss over the full logits; Ovis's own model computes
   its loss at the trained positions);
2. plain, padded batches of 4: the same model, right-padded with an attention mask (`fam.collate(samples, pack=False)`);
3. vlmkit packed: `vlmkit.lora.apply_lora(model, 'llm', r=64, gradient_checkpointing=True, autocast_adapter_dtype=False)`,
   `fam.enable_packing(model)` (varlen attention in the LLM), rows of `vlmkit.collation.pack_rows_by_budget` up to k
   times the longest sample's tokens (`--budgets`, default 4), `fam.collate(row, pack=True)`, and the loss from the
   final hidden states at the trained positions (`vlmkit.loss.labelled_lm_loss`, no `[tokens, vocab]` logits;
   `--vlmkit-loss model` takes the model's own `model(**row).loss` instead, `both` runs both rows).
   `--compile` adds the same row with compiled blocks (`vlmkit.compiling.compile_blocks`, inductor; aot_eager in --tiny);
   `--offload` adds each vlmkit row again with what its forward saves for the backward in pinned host memory
   (`torch.autograd.graph.save_on_cpu`, as `SFTConfig.offload_activations` does): a lower peak for a slower step.

Every row's batches are collated and pinned before the clock starts and copied without blocking, as a DataLoader with
workers and `pin_memory` hands them over; each row warms up on two batches, then the best of `--repeats` passes counts
(CUDA synchronised around each pass); peak memory is `torch.cuda.max_memory_allocated` over the timed passes.

Columns: tokens/s (LLM tokens, visual tokens included, padding excluded), peak GiB, both as ratios to row 1; the loss
check (token-weighted loss sum over all samples, relative to row 1: same data, same weights); and the fraction of the
card's bf16 dense peak (989 TFLOP/s for H100 SXM and H200; `--peak-tflops` for another card) that the step's *useful*
FLOPs make. Useful FLOPs, counted per sample from its rendered tokens and the model's shapes: LLM linears 4 x params x
tokens (forward and input gradients: the base is frozen), LoRA 6 x params x tokens, lm_head 4 x its params x trained
tokens, causal attention 6 x layers x heads x head_dim x tokens^2; the vision tower forward only (nothing below the LLM
trains): 2 x params x patches (the projector's per visual token) plus attention 4 x layers x width x sequence^2 of
each attended span (an InternVL tile, a Qwen window or whole image, an Ovis image). Recomputation by checkpointing,
padding and any backward through the frozen vision tower are not counted: they are work done, not work needed.

    python bench/sft_gpu.py                      # GPU: three families, 24 samples, best of 2 passes (about 5 minutes on an H100)
    python bench/sft_gpu.py --families qwen2_5_vl --json sft.json
    python bench/sft_gpu.py --tiny               # CPU, seconds: the same code path and table, bf16, tiny models and counts

`--tiny` (what CI runs) takes each family's tiny model and processor, 6 samples (images 64..160 px, texts 20..60 tokens),
one timed pass, budget 2x.
"""
import argparse, gc, json, math, random, string, sys, time, traceback, warnings
from pathlib import Path
import torch
from torch import nn
warnings.filterwarnings('ignore', category=FutureWarning)  # transformers' renames (gradient_checkpointing_enable, ...)

FAMILY_LABELS = {'internvl3_5': 'InternVL3.5-2B-shaped', 'qwen2_5_vl': 'Qwen2.5-VL-3B-shaped', 'ovis2_5': 'Ovis2.5-2B-shaped'}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)
INTERNVIT_300M = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=448,
                      patch_size=14, attention_bias=True, layer_scale_init_value=0.1, norm_type='layer_norm', hidden_act='gelu')
QWEN25_VL_3B_TEXT = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters=dict(rope_type='default', rope_theta=1000000.0, mrope_section=[16, 24, 24]))
QWEN25_VL_3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                           tokens_per_second=2, hidden_act='silu')

# ---- models of a released shape, over the family's tiny tokenizer ----

def internvl_2b(tok, dev):
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from vlmkit.internvl.prompt import internvl_processor
    cfg = InternVLConfig(vision_config=INTERNVIT_300M, text_config=dict(model_type='qwen3', **QWEN3_1_7B),
                         image_token_id=tok.context_image_token_id, image_seq_length=256, downsample_ratio=0.5)
    cfg._attn_implementation = 'sdpa'
    with torch.device(dev): model = InternVLForConditionalGeneration(cfg)
    ip = GotOcr2ImageProcessorPil(size={'height': 448, 'width': 448}, min_patches=1, max_patches=12, resample=3,
                                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return model, internvl_processor(ip, tok, image_seq_length=256)

def qwen25_vl_3b(tok, dev):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from vlmkit.qwen.family import QWEN_CHAT_TEMPLATE
    from vlmkit.qwen.processing import qwen_processor
    ids = dict(zip(['image_token_id', 'video_token_id', 'vision_start_token_id', 'vision_end_token_id'],
                   tok.convert_tokens_to_ids(['<|image_pad|>', '<|video_pad|>', '<|vision_start|>', '<|vision_end|>'])))
    cfg = Qwen2_5_VLConfig(text_config=QWEN25_VL_3B_TEXT, vision_config=QWEN25_VL_3B_VISION, **ids)
    cfg._attn_implementation = 'sdpa'
    with torch.device(dev): model = Qwen2_5_VLForConditionalGeneration(cfg)
    ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2,
                                  image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return model, qwen_processor(ip, tok, chat_template=QWEN_CHAT_TEMPLATE)

def ovis25_2b(tok, dev):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ovis_packed_gpu import ovis25_2b_config   # one definition of the shape, shared with that benchmark
    from vlmkit.ovis.modeling import Ovis2_5ForConditionalGeneration
    from vlmkit.ovis.preprocessing import OvisProcessor
    with torch.device(dev): model = Ovis2_5ForConditionalGeneration(ovis25_2b_config())
    model.text_tokenizer = tok
    return model, OvisProcessor(tok)   # the official pixel budget, 448*448 .. 1792*1792

REAL_SHAPES = {'internvl3_5': internvl_2b, 'qwen2_5_vl': qwen25_vl_3b, 'ovis2_5': ovis25_2b}

def build(fam, tiny, dev):
    "(model, processor) of `fam` on `dev`, seeded: its tiny model (`--tiny`), or the released shape with the released image settings over the tiny tokenizer."
    model, proc = fam.tiny()   # seeded
    if tiny: return model.to(dev, torch.get_default_dtype()), proc
    del model
    torch.manual_seed(0)
    return REAL_SHAPES[fam.name](proc.tokenizer, dev)

def plain_attention(model):
    "The LLM on SDPA, as transformers builds it (vlmkit's native Ovis defaults to varlen attention: set back to SDPA)."
    if getattr(model, 'llm', None) is not None: model.llm.set_attn_implementation('sdpa')
    return model

# ---- the same data for every family ----

def words(rng, n):
    "About `n` characters of lowercase words: `n` tokens of the byte-level tiny tokenizer."
    out = ''
    while len(out) < n: out += ''.join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) + ' '
    return out[:n].strip() or 'a'

def make_data(n, sides, texts, seed=0):
    "`n` seeded (image, question, answer): one synthetic image of sides in `sides` (multiples of 32 px), texts of `texts` tokens together."
    from vlmkit.images import synthetic_image
    rng, out = random.Random(seed), []
    for i in range(n):
        w, h = (rng.randrange(sides[0], sides[1] + 1, 32) for _ in range(2))
        img, _ = synthetic_image(seed * 100003 + i, (w, h), n_objects=2)
        total = rng.randint(*texts)
        q = max(8, total // 5)
        out.append((img, words(rng, q), words(rng, total - q)))
    return out

def conversations(data):
    from vlmkit.conversation import Conversation, ImageRef, Text, Turn
    return [Conversation([Turn('user', (ImageRef(img), Text(q))), Turn('assistant', (Text(a),))]) for img, q, a in data]

def trained(labels):
    "Positions a next-token loss trains: `labels[..., 1:]` not -100."
    return int((labels[..., 1:] != -100).sum())

# ---- useful FLOPs (see the docstring) ----

def matmul_params(module):
    "Weights used as matrices per token: every Linear's and every patch-embedding Conv's."
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)))

def window_squares(h, w, win):
    "Sum of squared window sizes (in merged tokens) of an h x w grid of merged tokens cut into win x win windows."
    rows = [min(win, h - i) for i in range(0, h, win)]
    cols = [min(win, w - j) for j in range(0, w, win)]
    return sum((a * b) ** 2 for a in rows for b in cols)

def vision_flops_internvl(model, r):
    vc = model.config.vision_config
    side = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
    patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
    tiles, S = len(r.visual.get('pixel_values', ())), (side // patch) ** 2 + 1   # patches and the class token of each tile
    vit, proj = matmul_params(model.model.vision_tower), matmul_params(model.model.multi_modal_projector)
    return (2 * vit * tiles * S + 4 * vc.num_hidden_layers * vc.hidden_size * tiles * S * S
            + 2 * proj * tiles * model.config.image_seq_length)

def vision_flops_qwen(model, r):
    vc, visual = model.config.vision_config, model.model.visual
    merger = matmul_params(visual.merger)
    vit, m2 = matmul_params(visual) - merger, vc.spatial_merge_size ** 2
    win = vc.window_size // vc.patch_size // vc.spatial_merge_size
    full = len(vc.fullatt_block_indexes)
    total = 0
    for t, h, w in r.visual.get('image_grid_thw', torch.zeros(0, 3)).tolist():
        P = t * h * w
        sq = full * P * P + (vc.depth - full) * t * window_squares(h // 2, w // 2, win) * m2 * m2
        total += 2 * vit * P + 4 * vc.hidden_size * sq + 2 * merger * P // m2
    return total

def vision_flops_ovis(model, r):
    vc = model.config.vit_config
    vt = model.visual_tokenizer
    vit, head, m2 = matmul_params(vt.vit), matmul_params(vt.head), vc.hidden_stride ** 2
    full = len(vc.full_attention_layers)
    win = vc.window_size // vc.hidden_stride // vc.patch_size
    total = 0
    for t, h, w in r.visual.get('grid_thws', torch.zeros(0, 3)).tolist():
        P = t * h * w
        sq = full * P * P + (vc.num_hidden_layers - full) * t * window_squares(h // 2, w // 2, win) * m2 * m2
        total += 2 * vit * P + 4 * vc.hidden_size * sq + 2 * (head + model.vte.weight.numel()) * P // m2  # head, then probs @ vte
    return total

VISION_FLOPS = {'internvl3_5': vision_flops_internvl, 'qwen2_5_vl': vision_flops_qwen, 'ovis2_5': vision_flops_ovis}

def flops_of(fam, model, rendered, r_lora):
    "Useful FLOPs of one forward + backward of each sample of `rendered` on `model` (the base, before LoRA)."
    from vlmkit.lora import select_targets
    dec = model.get_submodule(fam.layout.decoder)
    c = dec.config
    width = c.num_attention_heads * (getattr(c, 'head_dim', None) or c.hidden_size // c.num_attention_heads)
    llm, head = matmul_params(dec), model.get_output_embeddings().weight.numel()
    lora = sum(r_lora * (model.get_submodule(n).in_features + model.get_submodule(n).out_features) for n in select_targets(model, 'llm'))
    vision = VISION_FLOPS[fam.name]
    return [4 * llm * len(r) + 6 * lora * len(r) + 4 * head * trained(r.labels) + 6 * c.num_hidden_layers * width * len(r) ** 2
            + vision(model, r) for r in rendered]

def card_peak(card, given):
    "The card's bf16 dense peak in FLOP/s: `given` (TFLOP/s), else known Hopper cards, else None."
    if given: return given * 1e12
    if 'H100' in card or 'H200' in card: return (756 if 'PCIe' in card else 835 if 'NVL' in card else 989) * 1e12
    return None

# ---- the rows ----

def plain_peft(fam, model, r):
    "transformers + PEFT as the docs write it: checkpointing on the model, `get_peft_model` over the same LLM linears."
    from peft import LoraConfig, get_peft_model
    from vlmkit.lora import select_targets, targets_regex
    targets = targets_regex(model, select_targets(model, 'llm'))
    model.gradient_checkpointing_enable()
    # vlmkit's native Ovis takes forward(**kwargs): PEFT's causal-LM wrapper would pass inputs_embeds=None beside its own
    task = None if fam.layout.placeholders else 'CAUSAL_LM'
    return get_peft_model(plain_attention(model), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, task_type=task))

def vlmkit_peft(fam, model, r):
    from vlmkit.lora import apply_lora
    pm = apply_lora(model, 'llm', r=r, alpha=2 * r, gradient_checkpointing=True, autocast_adapter_dtype=False, verbose=False)
    return fam.enable_packing(pm)

def model_loss(pm, batch): return pm(**batch).loss

def hidden_state_loss(pm, batch):
    "The loss at the trained positions from the final hidden states (`vlmkit.loss.labelled_lm_loss`): no [tokens, vocab] logits."
    from vlmkit.loss import hidden_states_instead_of_logits, labelled_lm_loss
    batch = dict(batch)
    labels = batch.pop('labels')
    with hidden_states_instead_of_logits(pm) as head: hidden = pm(**batch).logits
    return labelled_lm_loss(hidden, labels, head)

def offloaded(loss_fn):
    "`loss_fn` with what its forward saves for the backward kept in pinned host memory (`SFTConfig.offload_activations`)."
    def loss(pm, batch):
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()): return loss_fn(pm, batch)
    return loss

def host_batches(fam, rendered, groups, pack, device):
    "Each group collated on the host, pinned where the GPU will read it: what a DataLoader with workers and `pin_memory` hands over."
    pin = (lambda t: t.pin_memory()) if device.type == 'cuda' else (lambda t: t)
    out = []
    for g in groups:
        b = fam.collate([rendered[i] for i in g], pack=pack)
        out.append({k: pin(v) if torch.is_tensor(v) else v for k, v in b.items()})
    return out

def to(batch, device, dtype):
    "A batch on `device` (copies that do not wait for the GPU), floating-point tensors in `dtype`."
    def move(v):
        if not torch.is_tensor(v): return v
        v = v.to(device, non_blocking=True)
        return v.to(dtype) if v.is_floating_point() else v
    return {k: move(v) for k, v in batch.items()}

def run(pm, loss_fn, batches, opt, device, dtype):
    "One pass: forward + backward of every batch (gradients accumulate), one optimizer step; (seconds, token-weighted loss sum)."
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    pm.zero_grad(set_to_none=True)
    sync(); t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for host in batches:
        batch = to(host, device, dtype)
        loss = loss_fn(pm, batch)
        loss.backward()
        loss_sum += loss.detach().double() * trained(host['labels'])
    opt.step()
    sync()
    return time.perf_counter() - t0, float(loss_sum)

def measure(name, pm, loss_fn, fam, rendered, groups, pack, device, dtype, repeats, flops, peak_flops):
    batches = host_batches(fam, rendered, groups, pack, device)   # outside the timing, as a DataLoader prefetches
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=0.0)
    run(pm, loss_fn, batches[:2], opt, device, dtype)               # warm up kernels, the allocator, the optimizer state
    cuda = device.type == 'cuda'
    if cuda: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        secs, loss_sum = run(pm, loss_fn, batches, opt, device, dtype)
        times.append(secs)
    secs = min(times)
    tokens = sum(len(rendered[i]) for g in groups for i in g)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float('nan')
    mfu = flops / secs / peak_flops if peak_flops else float('nan')
    r = dict(mode=name, passes=len(groups), tokens=tokens, secs=secs, times=times, tok_s=tokens / secs, peak_gib=peak,
             loss_sum=loss_sum, tflops=flops / secs / 1e12, mfu=mfu)
    print(f"    {name}: {r['tok_s']:.0f} tokens/s (passes of {', '.join(f'{t:.2f}' for t in times)} s), peak {peak:.2f} GiB, "
          f"{r['tflops']:.1f} TFLOP/s useful", flush=True)
    return r

def release():
    "Free what the last model left: its reference cycles (PEFT, vlmkit's fixes) and the allocator's cached blocks."
    gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache()

def guarded(rows, name, fn):
    "Run one row; an out-of-memory or other failure is reported as the row's result and the run goes on."
    try: rows.append(fn())
    except Exception as e:
        oom = isinstance(e, torch.OutOfMemoryError)
        if not oom: traceback.print_exc()
        print(f"    {name}: {'out of memory' if oom else type(e).__name__ + ': ' + str(e)[:200]}", flush=True)
        rows.append(dict(mode=name, error='OOM' if oom else type(e).__name__))
        release()

def bench_family(name, args, data, device, dtype, peak_flops):
    from vlmkit.collation import pack_rows_by_budget
    from vlmkit.family import FAMILIES
    fam, t0 = FAMILIES[name], time.perf_counter()
    print(f"{FAMILY_LABELS.get(name, name)} ({name}):", flush=True)
    model, proc = build(fam, args.tiny, device)
    params = sum(p.numel() for p in model.parameters())
    t1 = time.perf_counter()
    rendered = [fam.render(c, proc, training=True) for c in conversations(data)]
    flops = flops_of(fam, model, rendered, args.rank)
    lengths = [len(r) for r in rendered]
    vis = sum(sum(s.end - s.start for s in r.spans) for r in rendered)
    print(f"  built {params / 1e9:.2f}B params in {t1 - t0:.1f} s; rendered {len(rendered)} samples in {time.perf_counter() - t1:.1f} s: "
          f"{sum(lengths)} LLM tokens ({vis} visual), {min(lengths)}..{max(lengths)} a sample, "
          f"{sum(trained(r.labels) for r in rendered)} trained; {sum(flops) / 1e12:.0f} TFLOP of useful work a pass", flush=True)
    n, rows = len(rendered), []
    one, four = [[i] for i in range(n)], [list(range(i, min(i + 4, n))) for i in range(0, n, 4)]
    row = dict(fam=fam, rendered=rendered, device=device, dtype=dtype, repeats=args.repeats, flops=sum(flops), peak_flops=peak_flops)
    pm = plain_peft(fam, model, args.rank); pm.train()
    guarded(rows, 'plain, one at a time', lambda: measure('plain, one at a time', pm, model_loss, groups=one, pack=False, **row))
    guarded(rows, 'plain, padded batches of 4', lambda: measure('plain, padded batches of 4', pm, model_loss, groups=four, pack=False, **row))
    del pm, model; release()
    model, _ = build(fam, args.tiny, device)                           # the same seeded weights, fresh for vlmkit's recipe
    pm = vlmkit_peft(fam, model, args.rank); pm.train()
    losses = {'hidden': [('', hidden_state_loss)], 'model': [(", model's loss", model_loss)]}
    losses['both'] = losses['hidden'] + losses['model']
    if args.offload: losses = {k: v + [(f"{s}, offloaded", offloaded(fn)) for s, fn in v] for k, v in losses.items()}
    packs = {k: pack_rows_by_budget(rendered, int(k * max(lengths))) for k in args.budgets}
    for k, p in packs.items():
        if p.left_out: raise SystemExit(f"{name}: pack budget {k}x left samples out: {p.left_out}")
    compiled = [False] + ([True] if args.compile else [])
    for c in compiled:
        if c:
            from vlmkit.compiling import compile_blocks
            compile_blocks(pm.get_base_model(), backend=args.compile_backend)
        for k, p in packs.items():
            for suffix, fn in losses[args.vlmkit_loss]:
                label = f"vlmkit packed {k:g}x{', compiled' if c else ''}{suffix}"
                guarded(rows, label, lambda: measure(label, pm, fn, groups=p.rows, pack=True, **row))
    del pm, model; release()
    print(f"  {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return dict(family=name, label=FAMILY_LABELS.get(name, name), params=params, samples=n, llm_tokens=sum(lengths), visual_tokens=vis,
                longest=max(lengths), useful_tflop_per_pass=sum(flops) / 1e12, rows=rows)

def table(results, card):
    print(f"\n| family ({card}) | mode | passes | LLM tokens | time s | tokens/s | speed-up | peak GiB | peak ratio | loss check (rel) | bf16 peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        a = res['rows'][0] if res['rows'] and 'error' not in res['rows'][0] else None
        for r in res['rows']:
            if 'error' in r:
                print(f"| {res['label']} | {r['mode']} | | | | {r['error']} | | | | | |"); continue
            ratio = lambda k, fmt: format(r[k] / a[k], fmt) if a else '-'
            rel = format(abs(r['loss_sum'] - a['loss_sum']) / abs(a['loss_sum']), '.1e') if a else '-'
            mfu = f"{100 * r['mfu']:.1f}%" if math.isfinite(r['mfu']) else 'n/a'
            print(f"| {res['label']} | {r['mode']} | {r['passes']} | {r['tokens']} | {r['secs']:.2f} | {r['tok_s']:.0f} | "
                  f"{ratio('tok_s', '.2f')}x | {r['peak_gib']:.2f} | {ratio('peak_gib', '.2f')} | {rel} | {mfu} |")
    print("speed-up and peak ratio: against the family's first row (plain, one at a time); loss check: token-weighted loss sum over all "
          "samples, relative to that row (same data, same weights); bf16 peak: useful FLOPs per second over the card's bf16 dense peak")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='tiny models and counts on CPU, bf16 (smoke test of the same path)')
    ap.add_argument('--families', default=','.join(FAMILY_LABELS), help=f"comma-separated, from {', '.join(FAMILY_LABELS)}")
    ap.add_argument('--samples', type=int, help='conversations (default 24; --tiny: 6)')
    ap.add_argument('--repeats', type=int, help='timed passes per row, the best counts (default 2; --tiny: 1)')
    ap.add_argument('--budgets', type=float, nargs='+', help="vlmkit rows' token budgets, in multiples of the longest sample (default 4; --tiny: 2)")
    ap.add_argument('--rank', type=int, default=64, help='LoRA rank (alpha = 2 x rank)')
    ap.add_argument('--vlmkit-loss', choices=['hidden', 'model', 'both'], default='hidden',
                    help="vlmkit rows' loss: from hidden states at the trained positions (default), the model's own, or both rows")
    ap.add_argument('--compile', action='store_true', help='add the vlmkit rows again with compiled blocks')
    ap.add_argument('--offload', action='store_true', help="add each vlmkit row again with its saved activations in host memory (SFTConfig.offload_activations)")
    ap.add_argument('--compile-backend', help='torch.compile backend of --compile (default inductor; --tiny: aot_eager)')
    ap.add_argument('--peak-tflops', type=float, help="the card's bf16 dense peak in TFLOP/s (known: H100, H200)")
    ap.add_argument('--json', help='write the results here (after each family)')
    args = ap.parse_args()
    for k, full, tiny in [('samples', 24, 6), ('repeats', 2, 1), ('budgets', [4], [2]), ('compile_backend', 'inductor', 'aot_eager')]:
        if getattr(args, k) is None: setattr(args, k, tiny if args.tiny else full)
    families = args.families.split(',')
    unknown = [f for f in families if f not in FAMILY_LABELS]
    if unknown: ap.error(f"--families: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(FAMILY_LABELS)}")
    device = torch.device('cpu' if args.tiny or not torch.cuda.is_available() else 'cuda')
    dtype = torch.bfloat16
    torch.set_default_dtype(dtype)
    card = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'
    peak_flops = card_peak(card, args.peak_tflops) if device.type == 'cuda' else None
    sides, texts = ((64, 160), (20, 60)) if args.tiny else ((448, 1792), (200, 1500))
    import transformers, peft
    print(f"{card}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; {dtype}, "
          f"LoRA r={args.rank} on the LLM linears, gradient checkpointing, best of {args.repeats} pass(es); bf16 dense peak "
          f"{f'{peak_flops / 1e12:.0f} TFLOP/s' if peak_flops else 'unknown'}", flush=True)
    t0 = time.perf_counter()
    data = make_data(args.samples, sides, texts)
    print(f"{args.samples} samples: images {sides[0]}..{sides[1]} px a side, texts {texts[0]}..{texts[1]} tokens "
          f"(made in {time.perf_counter() - t0:.1f} s)", flush=True)
    results = []
    for name in families:
        results.append(bench_family(name, args, data, device, dtype, peak_flops))
        if args.json: Path(args.json).write_text(json.dumps(dict(card=card, args=vars(args), results=results), indent=1))
    table(results, card)
    print(f"total {time.perf_counter() - t0:.0f} s")
    bad = [f"{res['family']}/{r['mode']}: {r['error']}" for res in results for r in res['rows'] if r.get('error', 'OOM') != 'OOM']
    bad += [f"{res['family']}/{r['mode']}: loss not finite" for res in results for r in res['rows'] if 'loss_sum' in r and not math.isfinite(r['loss_sum'])]
    if bad: raise SystemExit(f"rows failed: {', '.join(bad)}")

if __name__ == '__main__': main()
