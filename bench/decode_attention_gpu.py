"""Decode attention, one layer: how fast each way of attending reads the KV cache, at the decode engine's shapes.

A decode step's attention reads every cached key and value of every row once; with long VLM prompts it is the largest
part of the step (see RESULTS.md). One query token a row, `--rows` (32) rows, 8 key/value heads with 2 query heads each,
head dim 128, bf16, each row's cache filled to a random length between half and all of `--positions` (the rest masked),
never shorter than the shared prompt below.
Ways, all the same function (checked against the first):

- `vlmkit_sdpa`: PyTorch's SDPA on the query heads grouped by key/value head, with the padding mask (what the engine's
  compiled step runs), eager and under `torch.compile`;
- SDPA without a mask (the bound: what a kernel that skips masked positions by length could read at);
- transformers' SDPA path, `repeat_kv` before SDPA (a copy of the cache per query head);
- matmul, softmax, matmul, under `torch.compile`;
- FlexAttention under `torch.compile`, a block mask by row length (CUDA only);
- `shared_prefix_attention` under `torch.compile` (on a GPU with Triton its Triton kernel: what the engine's compiled step
  runs by default for rows that share a prompt, `vlmkit.generation.reads_prompts_once`): the rows in groups of `--group` (8) share their first positions, all
  but the last 256 (a prompt and 256 new tokens), so each group's prompt is read once and each row's own positions row
  by row;
- `vlmkit_sdpa` and `shared_prefix_attention` replayed as CUDA graphs (`torch.compile(mode='reduce-overhead')`, CUDA
  only), as inside a compiled decode step, where a call's several kernels cost no launches from the host.

Reported: microseconds a call (best of `--repeats` timed loops) and the whole cache's bytes (keys and values) over that time.

`--kernel-sweep`: instead, the Triton kernel behind `shared_prefix_attention` (`vlmkit.attention.shared_decode_partials`,
then `merge_attention_chunks`) at each of its tunings (`vlmkit.attention.DECODE_TUNING`'s keys: `block_n` slots a loop
step, `warps` a program, about `programs` programs a launch, `stages` of Triton's pipeline, `skip_masked`: keys and values
loaded only at allowed slots, `skip_unfilled`: each row's own chunks read up to their last allowed slot), on the same inputs: microseconds a call
replayed in a CUDA graph of `--graph-calls` (28, a model's layers) calls, the bytes it must read (each group's prompt
once, each row's own slots) over that time, and the largest difference to the fused-kernel path. With `--tiny` on a
CPU it runs under Triton's interpreter (`TRITON_INTERPRET=1`, set before Triton is imported): the same calls checked,
the times meaningless. `--json` writes the rows and, for each position, the fastest tuning (what
`bench/grpo_rollout_gpu.py --decode-tuning` takes).

    python bench/decode_attention_gpu.py                         # GPU: 1,280, 4,096 and 8,192 positions
    python bench/decode_attention_gpu.py --tiny                  # CPU, seconds: the same calls, tiny shapes, eager only
    python bench/decode_attention_gpu.py --kernel-sweep --positions 1280 4096
"""
import argparse, itertools, json, os, sys, time
from pathlib import Path
if '--tiny' in sys.argv and '--kernel-sweep' in sys.argv: os.environ.setdefault('TRITON_INTERPRET', '1')   # before Triton is imported
import torch
import torch.nn.functional as F
from vlmkit.attention import shared_prefix_attention

def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()

def us_per_call(fn, n:int, repeats:int) -> float:
    for _ in range(3): fn()
    best = float('inf')
    for _ in range(repeats):
        sync(); t = time.perf_counter()
        for _ in range(n): fn()
        sync(); best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best

def ways(q, k, v, lengths, compile:bool, group:int, slots:int) -> dict:
    "name -> a function of no arguments computing the attention `[B, H, 1, D]` one way."
    B, H, _, D = q.shape
    kv, S = k.shape[1], k.shape[2]
    mask = (torch.arange(S, device=q.device)[None] < lengths[:, None])[:, None, None]    # [B, 1, 1, S]
    grouped = lambda q, k, v, m: F.scaled_dot_product_attention(q.reshape(B, kv, H // kv, D), k, v, attn_mask=m).reshape(B, H, 1, D)
    def matmuls(q, k, v, m):
        s = (q.reshape(B, kv, H // kv, D).float() @ k.transpose(-1, -2).float()) * D ** -0.5
        return (s.masked_fill(~m, float('-inf')).softmax(-1).to(v.dtype) @ v).reshape(B, H, 1, D)
    out = {'vlmkit_sdpa, eager': lambda: grouped(q, k, v, mask),
           'SDPA without a mask (reads every position)': lambda: F.scaled_dot_product_attention(q.reshape(B, kv, H // kv, D), k, v),
           'repeat_kv, then SDPA': lambda: F.scaled_dot_product_attention(q, k.repeat_interleave(H // kv, 1), v.repeat_interleave(H // kv, 1), attn_mask=mask)}
    if compile:
        out['vlmkit_sdpa, compiled'] = (lambda f: lambda: f(q, k, v, mask))(torch.compile(grouped, dynamic=False))
        out['matmul, softmax, matmul, compiled'] = (lambda f: lambda: f(q, k, v, mask))(torch.compile(matmuls, dynamic=False))
    else: out['matmul, softmax, matmul, eager'] = lambda: matmuls(q, k, v, mask)
    shared = lambda q, k, v, m: shared_prefix_attention(q, k, v, m, group, slots).transpose(1, 2)   # [B, 1, H, D] -> [B, H, 1, D]
    name = f"shared_prefix_attention, groups of {group} rows read {slots} prompt positions once"
    out[name + (', compiled' if compile else ', eager')] = (lambda f: lambda: f(q, k, v, mask))(torch.compile(shared, dynamic=False) if compile else shared)
    if compile and q.device.type == 'cuda':     # as inside a compiled decode step: replayed as a CUDA graph, launches almost free
        graphed = lambda f: (lambda g: lambda: g(q, k, v, mask))(torch.compile(f, mode='reduce-overhead', dynamic=False))
        out['vlmkit_sdpa, compiled, CUDA graph'] = graphed(grouped)
        out[name + ', compiled, CUDA graph'] = graphed(shared)
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        blocks = create_block_mask(lambda b, h, qi, ki: ki < lengths[b], B, None, 1, S, device=q.device)
        flex = torch.compile(flex_attention, dynamic=False)
        out['FlexAttention, compiled'] = lambda: flex(q, k, v, block_mask=blocks, enable_gqa=True)
    return out

SWEEP = dict(block_n=(32, 64, 128), warps=(2, 4), programs=(512, 1024, 2048), stages=(2, 3, 4), skip_masked=(False, True),
             skip_unfilled=(False, True))
TINY_SWEEP = dict(block_n=(16,), warps=(4,), programs=(8, 512), stages=(3,), skip_masked=(False, True), skip_unfilled=(False, True))

def kernel_sweep(q, k, v, lengths, group:int, slots:int, tiny:bool, graph_calls:int, repeats:int) -> list[tuple]:
    "(tuning, us a call, max difference to the fused-kernel path) of `shared_decode_partials` + merge at every tuning of the sweep."
    import vlmkit.attention as A
    B, H, _, D = q.shape
    mask = torch.arange(k.shape[2], device=q.device)[None] < lengths[:, None]
    with_fused = A.decode_kernel_runs
    A.decode_kernel_runs = lambda *a: False                 # the reference: PyTorch's fused kernels (or the CPU's)
    try: want = A.shared_prefix_attention(q, k, v, mask[:, None, None], group, slots)[:, 0].float()
    finally: A.decode_kernel_runs = with_fused
    grid = TINY_SWEEP if tiny else SWEEP
    rows = []
    for values in itertools.product(*grid.values()):
        tuning = dict(zip(grid, values))
        call = lambda: A.merge_attention_chunks(*A.shared_decode_partials(q[:, :, 0], k, v, mask, group, slots, **tuning), 2)[0]
        try:
            diff = (call().float() - want).abs().max().item()
            if q.is_cuda:                                   # as in a compiled step: a CUDA graph of a model's calls, no launches from the host
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph): [call() for _ in range(graph_calls)]
                us = us_per_call(graph.replay, 10, repeats) / graph_calls
            else: us = us_per_call(call, 1, 1)
            rows.append((tuning, us, diff))
            print(f"# {tuning}: {us:.1f} us, difference {diff:.1e}", file=sys.stderr, flush=True)   # progress, kept if a long sweep is cut
        except Exception as e: rows.append((tuning, float('nan'), f"{type(e).__name__}: {str(e)[:80]}"))
    return rows

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='CPU, tiny shapes, eager only (smoke test of the same calls)')
    ap.add_argument('--rows', type=int, help='rows (default 32; --tiny: 4)')
    ap.add_argument('--positions', type=int, nargs='+', help='cache positions (default 1280 4096 8192; --tiny: 64)')
    ap.add_argument('--repeats', type=int, default=3, help='timed loops, the best counts')
    ap.add_argument('--group', type=int, help='rows that share a prompt (default 8; --tiny: 2)')
    ap.add_argument('--kernel-sweep', action='store_true', help="time the Triton decode kernel's tunings instead of the ways of attending")
    ap.add_argument('--graph-calls', type=int, default=28, help='--kernel-sweep: calls a CUDA graph replays (a model\'s layers)')
    ap.add_argument('--json', help='--kernel-sweep: write every row and the fastest tuning at each position here')
    args = ap.parse_args()
    device = torch.device('cpu' if args.tiny or not torch.cuda.is_available() else 'cuda')
    rows, positions = args.rows or (4 if args.tiny else 32), args.positions or ([64] if args.tiny else [1280, 4096, 8192])
    kv, groups, D, n = (2, 2, 16, 5) if args.tiny else (8, 2, 128, 100)
    group, new = args.group or (2 if args.tiny else 8), 16 if args.tiny else 256
    dtype = torch.bfloat16
    card = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'
    print(f"{card}; torch {torch.__version__}; {rows} rows, {kv} KV heads x {groups} query heads, head dim {D}, bf16", flush=True)
    if args.kernel_sweep: print(f"\n| Triton decode kernel ({card}) | positions | {' | '.join(SWEEP)} | us a call | bytes read, GB/s | max difference to the fused kernels |\n"
                                f"|---|---:|{'---:|' * len(SWEEP)}---:|---:|---:|")
    else: print(f"\n| decode attention, one layer ({card}) | positions | us a call | whole cache, GB/s | max difference to the first |\n|---|---:|---:|---:|---:|")
    swept = dict(card=card, rows=[], fastest={})
    g = torch.Generator(device='cpu').manual_seed(0)
    for S in positions:
        q = torch.randn(rows, kv * groups, 1, D, generator=g).to(device, dtype)
        k, v = (torch.randn(rows, kv, S, D, generator=g).to(device, dtype) for _ in range(2))
        slots = S - new
        for t in (k, v): t[:, :, :slots] = t[::group, :, :slots].repeat_interleave(group, 0)    # each group's rows hold one prompt
        lengths = torch.randint(max(S // 2, slots + 1), S + 1, (rows,), generator=g).to(device)
        if args.kernel_sweep:
            read = (rows // group * slots + rows * (S - slots)) * kv * D * 2 * k.element_size()   # keys and values: prompts once, own slots per row
            ranked = sorted(kernel_sweep(q, k, v, lengths, group, slots, args.tiny, args.graph_calls, args.repeats), key=lambda r: (r[1] != r[1], r[1]))
            for tuning, us, diff in ranked:
                print(f"| shared_decode_partials + merge | {S} | {' | '.join(str(v) for v in tuning.values())} | {us:.1f} | {read / us / 1e3:.0f} | "
                      + (f"{diff:.1e} |" if isinstance(diff, float) else f"failed: {diff} |"), flush=True)
                swept['rows'].append(dict(positions=S, us=us, difference=diff, **tuning))
            if ranked and ranked[0][1] == ranked[0][1]: swept['fastest'][S] = ranked[0][0]
            if args.json: Path(args.json).write_text(json.dumps(swept, indent=1))
            continue
        first = None
        for name, fn in ways(q, k, v, lengths, not args.tiny, group, slots).items():
            try:
                out = fn().float()
                first = out if first is None else first
                us = us_per_call(fn, n, args.repeats)
                diff = (out - first).abs().max().item() if 'without a mask' not in name else float('nan')
                print(f"| {name} | {S} | {us:.1f} | {2 * k.numel() * k.element_size() / us / 1e3:.0f} | "
                      f"{'' if diff != diff else f'{diff:.1e}'} |", flush=True)
            except Exception as e: print(f"| {name} | {S} | failed: {type(e).__name__}: {str(e)[:80]} | | |", flush=True)

if __name__ == '__main__': main()
