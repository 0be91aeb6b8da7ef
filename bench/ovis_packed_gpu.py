"""Ovis2.5 training step: packed batches (varlen attention, no padding) vs one sample at a time.

An Ovis2.5-2B-shaped model with random weights (Qwen3-1.7B-sized LLM, so400m NaViT, visual vocabulary 65536), bf16,
forward + backward on the same seeded samples (images 448^2 .. 1792^2, texts 200 .. 1,500 tokens) in two ways:
one sample per forward (the batch-size-1 path of the research code) and packs of several samples bounded by the largest
single sample's LLM tokens and ViT patches times k. The competitor is the one-at-a-time path computing what the official
forward computes (visual head in one piece, transformers' loss from full logits); vlmkit's chunked visual head and
loss never hold the [tokens, vocab] tensors, which frees the memory that lets packs grow at the competitor's peak. Prints one table: tokens/s, peak memory and the ratios of each
row to the competitor, and the correctness check (token-weighted loss sum over all samples, same data and weights).

    python bench/ovis_packed_gpu.py            # GPU: 2B shape, bf16
    python bench/ovis_packed_gpu.py --tiny     # CPU smoke test of the same code path (tiny shape, fp32)
"""
import argparse, random, time
import torch
from vlmkit.attention import varlen_backend
from vlmkit.ovis.modeling import Ovis2_5, Ovis2_5Config, tiny_ovis25_config, pack_samples, pack_by_budget, random_sample

def ovis25_2b_config() -> Ovis2_5Config:
    "Ovis2.5-2B shapes: Qwen3-1.7B LLM (tied lm_head) and the so400m NaViT of the official config (full attention everywhere)."
    llm = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
               num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000, rms_norm_eps=1e-6,
               tie_word_embeddings=True, use_sliding_window=False, sliding_window=None)
    vit = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=16, image_size=512,
               hidden_stride=2, window_size=112, fullatt_block_indexes=None, preserve_original_pe=True, use_rope=True)
    return Ovis2_5Config(llm_config=llm, vit_config=vit, visual_vocab_size=65536, hidden_size=2048)

def make_samples(n, sides, texts, vocab, seed=0):
    "Seeded samples: one image of random size (multiples of 32 px) and a random-length text each; labels on text tokens."
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        h, w = (rng.randrange(sides[0], sides[1] + 1, 32) // 16 for _ in range(2))
        s = random_sample((h, w), rng.randint(*texts), vocab=vocab, generator=g)
        s['labels'] = s['input_ids'].clamp(min=0).masked_fill(s['input_ids'] < 0, -100)
        out.append(s)
    return out

def costs(s): return (s['input_ids'].shape[1], s['pixel_values'].shape[0])

def to(batch, device, dtype):
    return {k: (v.to(device, dtype) if torch.is_tensor(v) and v.is_floating_point() else v.to(device) if torch.is_tensor(v) else v)
            for k, v in batch.items() if k != 'seq_lens'}

def run(model, groups, samples, device, dtype, full_logits=False):
    "Forward + backward over every group (gradients accumulate, as over a batch); returns time, token-weighted loss sum."
    model.visual_chunk = None if full_logits else 2048   # the official forward: visual head in one piece, full logits
    loss_sum = 0.0
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sync(); t0 = time.perf_counter()
    for group in groups:
        batch = to(pack_samples([samples[i] for i in group]), device, dtype)
        out = model(**batch, return_logits=full_logits)
        out.loss.backward()
        loss_sum += out.loss.detach() * (batch['labels'][:, 1:] != -100).sum()
    sync()
    return time.perf_counter() - t0, float(loss_sum)

def measure(model, name, groups, samples, device, dtype, full_logits=False):
    model.zero_grad(set_to_none=True)
    if device.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    secs, loss_sum = run(model, groups, samples, device, dtype, full_logits)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else float('nan')
    tokens = sum(costs(samples[i])[0] for g in groups for i in g)
    return dict(mode=name, passes=len(groups), tokens=tokens, secs=secs, tok_s=tokens / secs, peak=peak, loss_sum=loss_sum)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='tiny shapes on CPU (smoke test)')
    ap.add_argument('--samples', type=int, default=24)
    ap.add_argument('--budgets', type=int, nargs='+', default=[1, 2, 4, 6], help='pack budgets, in multiples of the largest sample')
    ap.add_argument('--no-checkpointing', action='store_true', help='keep all activations (default: gradient checkpointing on)')
    args = ap.parse_args()
    device = torch.device('cpu' if args.tiny or not torch.cuda.is_available() else 'cuda')
    dtype = torch.float32 if device.type == 'cpu' else torch.bfloat16
    if args.tiny: cfg, sides, texts, vocab = tiny_ovis25_config(llm=dict(vocab_size=1000)), (64, 160), (20, 60), 1000
    else: cfg, sides, texts, vocab = ovis25_2b_config(), (448, 1792), (200, 1500), 151936
    torch.manual_seed(0)
    prev = torch.get_default_dtype(); torch.set_default_dtype(dtype)
    with torch.device(device): model = Ovis2_5(cfg)
    torch.set_default_dtype(prev)
    model.train()
    if not args.no_checkpointing: getattr(model, 'activation_checkpointing_enable', model.gradient_checkpointing_enable)()
    samples = make_samples(args.samples, sides, texts, vocab)
    one = [[i] for i in range(len(samples))]
    budget = tuple(max(c) for c in zip(*map(costs, samples)))   # the largest single sample's LLM tokens and ViT patches
    plans = [('one at a time, full logits', one, True), ('one at a time, vlmkit loss', one, False)] + [
        (f'vlmkit packed, {k}x budget', pack_by_budget([costs(s) for s in samples], tuple(k * b for b in budget)), False) for k in args.budgets]
    for _, groups, full in plans: run(model, groups[:1], samples, device, dtype, full)   # warm up kernels and the allocator
    rows = [measure(model, name, groups, samples, device, dtype, full) for name, groups, full in plans]
    card = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"Ovis2.5 {'tiny' if args.tiny else '2B-shaped'} ({params:,.1f}M params), {dtype}, {card}, attention backend "
          f"{varlen_backend(torch.empty(1, 1, 1, device=device, dtype=dtype))}, gradient checkpointing {not args.no_checkpointing}")
    print(f"{len(samples)} samples: images {sides[0]}..{sides[1]} px, texts {texts[0]}..{texts[1]} tokens; pack budget "
          f"{budget[0]} LLM tokens / {budget[1]} ViT patches; torch {torch.__version__}")
    print(f"| {'mode':26} | passes | LLM tokens | time s | tokens/s | speed-up | peak GiB | peak ratio | loss check (rel) |")
    print(f"|{'-' * 28}|--------|------------|--------|----------|----------|----------|------------|------------------|")
    a = rows[0]
    for r in rows:
        rel = abs(r['loss_sum'] - a['loss_sum']) / abs(a['loss_sum'])
        print(f"| {r['mode']:26} | {r['passes']:6} | {r['tokens']:10} | {r['secs']:6.2f} | {r['tok_s']:8.0f} | {r['tok_s'] / a['tok_s']:7.2f}x "
              f"| {r['peak']:8.2f} | {r['peak'] / a['peak']:10.2f} | {rel:16.1e} |")
    print("loss check: token-weighted loss sum over all samples, relative to the one-at-a-time run (same data, same weights)")

if __name__ == '__main__': main()
