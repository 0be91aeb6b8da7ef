"""Ovis2.5 training step: packed batches (varlen attention, no padding) vs one sample at a time.

An Ovis2.5-2B-shaped model with random weights (Qwen3-1.7B-sized LLM, so400m NaViT, visual vocabulary 65536), bf16,
gradient checkpointing, forward + backward on the same seeded samples (images 448^2 .. 1792^2, texts 200 .. 1,500
tokens), in these ways:

* the official path, one sample per forward (the batch-size-1 rule of the research code): the official forward's
  computation (visual head in one piece, full logits and transformers' loss), eager PyTorch, FlashAttention-2 for
  every attention (`torch_varlen`, PyTorch's build of the kernel the official code calls through flash-attn);
* vlmkit, one sample per forward, and vlmkit packing several samples per forward, bounded by the largest single
  sample's LLM tokens and ViT patches times k: chunked visual head and loss (no `[tokens, vocab]` tensors), the
  attention kernel `vlmkit.attention` picks (flash-attn 4 where installed on a Hopper or Blackwell GPU, else
  FlashAttention-2; `--backend` pins one) on packed borders, and compiled blocks (`vlmkit.compiling`). The eager packed row
  shows what packing and the chunked head and loss give before compilation;
* packed rows again with attention kept through checkpointing (`enable_checkpointing(model, keep_attention=...)`:
  the attention kernels' outputs are held until the backward instead of being recomputed; `--keep-budgets`, in the
  layers `--keep-layers` matches, by default the ViT's, whose attention costs most).

For the official-path row, `official_computations` puts back the two computations of the official forward that
vlmkit's model does differently for speed (the visual head's matmul over its 65,532 unaligned columns, and
`F.interpolate` for the position grid): same numbers to float32 rounding, the official cost. Every row's batches are
collated and pinned before the clock starts and copied to the GPU without blocking, as a DataLoader with workers and
`pin_memory` hands them over (collated inside the timed loop, the 150 MB of a pack's pixels left the GPU idle while the
host concatenated and copied them: 3% of the packed step). Prints one table: tokens/s, peak memory, the ratios to the official path, and the correctness
check (token-weighted loss sum over all samples, same data and weights).

    python bench/ovis_packed_gpu.py            # GPU: 2B shape, bf16
    python bench/ovis_packed_gpu.py --tiny     # CPU, seconds: the same code path and table, bf16, tiny shape and counts

`--tiny` (what CI runs) takes the tiny Ovis2.5 config, 8 samples, one timed pass, budgets 2x and 4x, and compiles the
blocks with the `eager` backend (Dynamo's capture as on the GPU, then the captured graphs run as they are: a smoke test of
the script; tests/test_sft.py and tests/test_compiling.py check compiled blocks under `aot_eager`, with AOT autograd).
"""
import argparse, math, random, time
from contextlib import contextmanager, nullcontext
from functools import partial
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from vlmkit.attention import BACKENDS, attention_backend, varlen_backend
from vlmkit.compiling import compile_blocks
from vlmkit.checkpointing import enable_checkpointing
from vlmkit.packing import pack_by_budget
from vlmkit.ovis.modeling import (Ovis2_5, Ovis2_5Config, NavitEmbeddings, VisualHead, block_order, tiny_ovis25_config,
                                  pack_samples, random_sample)

def ovis25_2b_config() -> Ovis2_5Config:
    "Ovis2.5-2B shapes: Qwen3-1.7B LLM (tied lm_head) and the so400m NaViT of the official config (full attention everywhere)."
    llm = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
               num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000, rms_norm_eps=1e-6,
               tie_word_embeddings=True, use_sliding_window=False, sliding_window=None)
    vit = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=16, image_size=512,
               hidden_stride=2, window_size=112, fullatt_block_indexes=None, preserve_original_pe=True, use_rope=True)
    return Ovis2_5Config(llm_config=llm, vit_config=vit, visual_vocab_size=65536, hidden_size=2048)

def _official_logits(self, features): return self[1](self[0](features))

def _official_positions(self, grid_thws):
    table = self.position_embedding.weight.float().reshape(self.side, self.side, -1).permute(2, 0, 1)[None]
    out = []
    for t, h, w in grid_thws.tolist():
        pe = F.interpolate(table, size=(h, w), mode='bicubic', align_corners=False)[0].permute(1, 2, 0)
        out.append(block_order(pe, self.stride).repeat(t, 1))
    return torch.cat(out)

@contextmanager
def official_computations():
    "Within the block: the visual head as one unpadded matmul and the position grid through `F.interpolate`, as the official code."
    saved = VisualHead.logits, NavitEmbeddings.positions
    VisualHead.logits, NavitEmbeddings.positions = _official_logits, _official_positions
    try: yield
    finally: VisualHead.logits, NavitEmbeddings.positions = saved

def make_samples(n, sides, texts, vocab, seed=0):
    "Seeded samples: one image of random size (multiples of 32 px) and a random-length text each; labels on text tokens."
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        h, w = (rng.randrange(sides[0], sides[1] + 1, 32) // 16 for _ in range(2))
        out.append(random_sample((h, w), rng.randint(*texts), vocab=vocab, generator=g, labelled=True))
    return out

def costs(s): return (s['input_ids'].shape[1], s['pixel_values'].shape[0])

def collate(groups, samples, device) -> list[dict]:
    "Each group packed into one batch on the host, pinned where the GPU will read it: what a DataLoader with workers and `pin_memory` hands over."
    pin = (lambda t: t.pin_memory()) if device.type == 'cuda' else (lambda t: t)
    return [{k: pin(v) for k, v in pack_samples([samples[i] for i in g]).items() if k != 'seq_lens'} for g in groups]

def to(batch, device, dtype):
    "A batch on `device` (copies that do not wait for the GPU), floating-point tensors in `dtype`."
    return {k: v.to(device, non_blocking=True).to(dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}

def run(model, batches, device, dtype, official=False, backend=None):
    "Forward + backward over every batch (gradients accumulate, as over a batch); returns time, token-weighted loss sum."
    model.visual_chunk = None if official else 2048   # the official forward: visual head in one piece, full logits
    loss_sum = 0.0
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    with attention_backend(backend) if backend else nullcontext(), official_computations() if official else nullcontext():
        sync(); t0 = time.perf_counter()
        for host_batch in batches:
            batch = to(host_batch, device, dtype)
            out = model(**batch, return_logits=official)
            out.loss.backward()
            loss_sum += out.loss.detach() * (batch['labels'][:, 1:] != -100).sum()
        sync()
    return time.perf_counter() - t0, float(loss_sum)

def measure(model, name, groups, samples, device, dtype, official=False, backend=None, repeats=1):
    "Best time of `repeats` passes over all groups (host noise slows a pass, nothing speeds one up), and the peak memory."
    batches = collate(groups, samples, device)                          # outside the timing, as a DataLoader prefetches
    run(model, batches[:2], device, dtype, official, backend)           # warm up kernels, the allocator, compiled graphs
    if device.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        secs, loss_sum = run(model, batches, device, dtype, official, backend)
        times.append(secs)
    secs = min(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else float('nan')
    tokens = sum(costs(samples[i])[0] for g in groups for i in g)
    r = dict(mode=name, passes=len(groups), tokens=tokens, secs=secs, tok_s=tokens / secs, peak=peak, loss_sum=loss_sum)
    print(f"  {name}: {r['tok_s']:.0f} tokens/s (passes of {', '.join(f'{t:.2f}' for t in times)} s), peak {peak:.2f} GiB, "
          f"graphs {counters['stats']['unique_graphs']}", flush=True)
    return r

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='tiny shapes and counts on CPU, bf16 (smoke test of the same path)')
    ap.add_argument('--samples', type=int, help='samples (default 32; --tiny: 8)')
    ap.add_argument('--repeats', type=int, help='timed passes over the samples per row, the best counts (default 3; --tiny: 1)')
    ap.add_argument('--budgets', type=float, nargs='+', help='pack budgets, in multiples of the largest sample (default 2 4 6 8; --tiny: 2 4)')
    ap.add_argument('--compile-backend', help="torch.compile backend of the compiled rows (default inductor; --tiny: eager)")
    ap.add_argument('--no-checkpointing', action='store_true', help='keep all activations (default: gradient checkpointing on)')
    ap.add_argument('--no-compile', action='store_true', help='vlmkit rows without compiled blocks')
    ap.add_argument('--backend', choices=BACKENDS, help='attention kernel of the vlmkit rows (default: what vlmkit.attention picks)')
    ap.add_argument('--keep-budgets', type=float, nargs='*', default=[],
                    help='pack budgets run again with attention kept through checkpointing (none: skip)')
    ap.add_argument('--keep-layers', default='visual_tokenizer', help="regex of the checkpointed layers whose attention is kept ('.': all)")
    args = ap.parse_args()
    for k, full, tiny in [('samples', 32, 8), ('repeats', 3, 1), ('budgets', [2, 4, 6, 8], [2, 4]), ('compile_backend', 'inductor', 'eager')]:
        if getattr(args, k) is None: setattr(args, k, tiny if args.tiny else full)
    device = torch.device('cpu' if args.tiny or not torch.cuda.is_available() else 'cuda')
    dtype = torch.bfloat16 if args.tiny or device.type == 'cuda' else torch.float32
    if args.tiny: cfg, sides, texts, vocab = tiny_ovis25_config(llm=dict(vocab_size=1000)), (64, 160), (20, 60), 1000
    else: cfg, sides, texts, vocab = ovis25_2b_config(), (448, 1792), (200, 1500), 151936
    torch.manual_seed(0)
    prev = torch.get_default_dtype(); torch.set_default_dtype(dtype)
    with torch.device(device): model = Ovis2_5(cfg)
    torch.set_default_dtype(prev)
    model.train()
    if not args.no_checkpointing: enable_checkpointing(model)
    samples = make_samples(args.samples, sides, texts, vocab)
    one = [[i] for i in range(len(samples))]
    budget = tuple(max(c) for c in zip(*map(costs, samples)))   # the largest single sample's LLM tokens and ViT patches
    keep = [] if args.no_checkpointing else args.keep_budgets
    packs = {k: pack_by_budget([costs(s) for s in samples], tuple(k * b for b in budget)) for k in {*args.budgets, *keep}}
    fused = 'torch_varlen' if device.type == 'cuda' else None   # FlashAttention-2, the kernel the official code calls
    k0 = args.budgets[len(args.budgets) // 2]
    row = partial(measure, model, samples=samples, device=device, dtype=dtype, repeats=args.repeats)
    vlmkit_row = partial(row, backend=args.backend)
    rows = [row('official path: one at a time', one, official=True, backend=fused), vlmkit_row(f'vlmkit packed {k0:g}x, eager', packs[k0])]
    if not args.no_compile:
        compile_blocks(model, whole=[model.visual_tokenizer.head], backend=args.compile_backend)
        rows.append(vlmkit_row('vlmkit one at a time', one))
    rows += [vlmkit_row(f'vlmkit packed {k:g}x', packs[k]) for k in args.budgets]
    if keep:
        enable_checkpointing(model, keep_attention=args.keep_layers)
        rows += [vlmkit_row(f'vlmkit packed {k:g}x, {args.keep_layers} attention kept', packs[k]) for k in keep]
    card = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"Ovis2.5 {'tiny' if args.tiny else '2B-shaped'} ({params:,.1f}M params), {dtype}, {card}, attention backend "
          f"{args.backend or varlen_backend(torch.empty(1, 1, 1, device=device, dtype=dtype))} (official row: {fused or 'sdpa'}), gradient checkpointing {not args.no_checkpointing}, "
          f"compiled blocks {'no' if args.no_compile else args.compile_backend} (graphs captured: {counters['stats']['unique_graphs']})")
    print(f"{len(samples)} samples: images {sides[0]}..{sides[1]} px, texts {texts[0]}..{texts[1]} tokens; pack budget "
          f"{budget[0]} LLM tokens / {budget[1]} ViT patches; torch {torch.__version__}")
    print(f"| {'mode':52} | passes | LLM tokens | time s | tokens/s | speed-up | peak GiB | peak ratio | loss check (rel) |")
    print(f"|{'-' * 54}|--------|------------|--------|----------|----------|----------|------------|------------------|")
    a = rows[0]
    for r in rows:
        rel = abs(r['loss_sum'] - a['loss_sum']) / abs(a['loss_sum'])
        print(f"| {r['mode']:52} | {r['passes']:6} | {r['tokens']:10} | {r['secs']:6.2f} | {r['tok_s']:8.0f} | {r['tok_s'] / a['tok_s']:7.2f}x "
              f"| {r['peak']:8.2f} | {r['peak'] / a['peak']:10.2f} | {rel:16.1e} |")
    print("loss check: token-weighted loss sum over all samples, relative to the official-path row (same data, same weights)")
    if not all(math.isfinite(r['loss_sum']) for r in rows): raise SystemExit("a row's loss is not finite")

if __name__ == '__main__': main()
