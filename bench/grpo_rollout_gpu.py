"""R-GRPO rollout speed: new tokens/s of `vlmkit.rollout` with crops on a 2B-shaped model of each family, the decode
engine's KV caches side by side, a training step's time split, and the plain transformers `generate` reference point.

1. Reference (`--parts reference`): a Qwen3-1.7B-shaped LLM (random weights, bf16), `--prompt-len` (1,024) random prompt
   tokens, `--new-tokens` (256) sampled tokens a row, no stop token. transformers' `generate` one completion at a time,
   G=8 completions of one prompt in one call, and 4 prompts x G=8 in one call; then vlmkit's `generate` on the 4 x G=8
   rows with each of `--caches`. New tokens/s = rows x new tokens / wall seconds, after one warm-up call of each (the
   compiled cache compiles there). Greedy check: each cache's greedy rows against transformers' greedy `generate` of the
   same batch (rows identical, of 32).
2. Rollouts (`--parts rollout`): each family's released shape over its tiny tokenizer (`bench/sft_gpu.py`'s builders:
   InternVL3.5-2B, Qwen2.5-VL-3B, Ovis2.5-2B), bf16, `--prompts` (4) grounding prompts on `--image-size` (640x480)
   synthetic images x `--group` (8) rollouts, `--new-tokens` (256) tokens a completion. Random weights never call a tool,
   so a logits processor makes every row write `<tool_call>Crop [...]</tool_call>` after `--call-at` (32) tokens of its
   first round: the crop tool runs on the real image, the crop's visual tokens enter the trajectory, and the row decodes
   on to its token budget. New tokens/s = generated tokens / rollout wall seconds (tool time included), after one warm-up
   rollout per cache. Each cache's rows go on from their KV cache after the call (`reuse_cache`); one more row of the last
   cache prefills whole trajectories again (`--no-whole-prefill` leaves it out). Greedy check: greedy rollouts of each row
   against the first row's (identical trajectories).
3. Step split (`--parts step`): two GRPO steps of `vlmkit.grpo.GRPOTrainer` on the same prompts (LoRA r=16, the same
   forced crop, the fastest cache of part 2, `--train-tokens`), the second step's `time/*` logs: decoding, tools, rewards,
   training.
4. Profile (`--parts profile`): where a decode step's time goes, on the reference batch with the last of `--caches`:
   wall ms a step of vlmkit's `generate`, the attention kernels' GPU ms a step (torch.profiler; the busiest kernels listed), and the model's step alone on a
   static cache; the gap between them is the host's work between steps.

`--share-prompt-reads`: every part decodes within `vlmkit.generation.share_prompt_reads()` (rows of one prompt read its
keys and values once a group; by default vlmkit reads them so where its Triton decode kernel runs, a GPU with Triton);
`--share-prompt-reads off` reads each row's own copy; `--share-prompt-reads both` runs the reference part's vlmkit rows
without and with it, side by side in one run (the other parts with it).
`--fuse-projections`: the same for `vlmkit.generation.fuse_projections()` (compiled steps compute each layer's
query/key/value projections as one matrix product, and its gate/up projections as one; by default on a GPU).
`--inductor WAY ...`: the reference part's vlmkit rows once for each way of compiling (Inductor's settings, e.g.
`max_autotune_gemm=True`; `default` is vlmkit's), side by side in one run.

Target (issue 18): >= 10x the 4 x G=8 plain-generate figure on the same card in rollout new tokens/s.

    python bench/grpo_rollout_gpu.py                                     # GPU: all parts, all families
    python bench/grpo_rollout_gpu.py --parts rollout --families qwen2_5_vl --caches dynamic,compiled
    python bench/grpo_rollout_gpu.py --tiny                              # CPU, seconds: the same code paths, tiny models
"""
import argparse, ast, json, sys, tempfile, time, traceback, warnings
from contextlib import contextmanager
from pathlib import Path
import torch
warnings.filterwarnings('ignore', category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_gpu import FAMILY_LABELS, QWEN3_1_7B, build, release   # one definition of each released shape, shared with the SFT benchmark

TINY_LLM = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True)

def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()

def timed(fn):
    "(result, seconds) of `fn()`, CUDA synchronised on both sides."
    sync(); t = time.perf_counter()
    out = fn(); sync()
    return out, time.perf_counter() - t

# ---- part 1: the plain-generate reference on an LLM ----

def greedy_dtypes(args) -> list:
    "The dtypes of the greedy checks: the run's own, then float32, where random weights leave no ties that rounding breaks."
    return list(dict.fromkeys([torch.get_default_dtype(), torch.float32])) if args.greedy_fp32 else [torch.get_default_dtype()]

def dtype_name(dtype) -> str: return str(dtype).removeprefix('torch.')

def agreement(ours, reference) -> tuple[int, int|None]:
    "(rows identical, the median token index of the first difference among the rows that differ, or None)."
    ours, reference = [torch.as_tensor(o).reshape(-1) for o in ours], [torch.as_tensor(r).reshape(-1) for r in reference]
    firsts = []
    for o, r in zip(ours, reference):
        n = min(len(o), len(r))
        diff = (o[:n].cpu() != r[:n].cpu()).nonzero()
        if len(diff) or len(o) != len(r): firsts.append(int(diff[0]) if len(diff) else n)
    return len(ours) - len(firsts), (sorted(firsts)[len(firsts) // 2] if firsts else None)

def reference_llm(tiny, device):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(**(TINY_LLM if tiny else QWEN3_1_7B))
    cfg._attn_implementation = 'sdpa'
    with torch.device(device): model = Qwen3ForCausalLM(cfg).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, 0
    return model

def plain_generate(model, ids, n, do_sample=True):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=do_sample,
                          top_k=None, top_p=1.0, temperature=1.0)[:, ids.shape[1]:]

def reference_batch(model, args, device) -> tuple[torch.Tensor, torch.Tensor]:
    "(prompts [P, L], rows [P x G, L]): `--prompts` random prompts of `--prompt-len` tokens, each repeated `--group` times."
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1000 if not args.tiny else 10, model.config.vocab_size, (args.prompts, args.prompt_len), generator=g).to(device)
    return prompts, prompts.repeat_interleave(args.group, 0)

def vlmkit_generate(model, rows, n, cache, do_sample=True):
    "vlmkit's `generate` of `rows` (a list of prompts), `n` new tokens each and no stop token: sampled at temperature 1, or greedy."
    from vlmkit.generation import generate
    sampling = dict(do_sample=True, temperature=1.0, top_k=None) if do_sample else {}
    return generate(model, list(rows), max_new_tokens=n, eos_token_id=[], pad_token_id=0, cache=cache, **sampling)

def switch_modes(choice:str) -> list[bool|None]:
    "The settings an on/off flag's `choice` runs (`--share-prompt-reads`, `--fuse-projections`): vlmkit's default (None), off, on, or off and on side by side."
    return {'auto': [None], 'off': [False], 'on': [True], 'both': [False, True]}[choice]

def switch_note(choice:str, name:str, off:str) -> str:
    "The run's header note for an on/off flag's `choice`, the setting `name` of `vlmkit.generation`, `off` what 'off' means."
    return {'auto': '', 'off': f'; {off}', 'on': f'; within {name}()', 'both': f'; reference rows without and within {name}()'}[choice]

def parse_inductor(spec:str) -> dict:
    "`--inductor`'s one way: 'default' (no settings), or 'name=value,...' of `torch._inductor.config` (values as Python literals)."
    if spec == 'default': return {}
    pairs = [p.split('=', 1) for p in spec.split(',')]
    if bad := [p[0] for p in pairs if len(p) != 2]: raise SystemExit(f"--inductor {spec!r}: {bad} is not name=value")
    return {k.strip(): ast.literal_eval(v.strip()) for k, v in pairs}

@contextmanager
def inductor_settings(model, spec:str):
    "Within the block `model`'s compiled steps compile under `--inductor` way `spec`: compiled afresh where the way before was another."
    import torch._inductor.config as config
    from vlmkit.generation import forget_compiled_steps
    if model.__dict__.get('_bench_inductor', 'default') != spec:
        forget_compiled_steps(model)
        torch._dynamo.reset()
        model.__dict__['_bench_inductor'] = spec
    with config.patch(parse_inductor(spec)): yield

@contextmanager
def reference_way(model, shared, fused, spec):
    "Within the block vlmkit decodes `model` as one of the reference part's variants: prompt reads, projections, Inductor way."
    from vlmkit.generation import fuse_projections, share_prompt_reads
    with share_prompt_reads(shared), fuse_projections(fused), inductor_settings(model, spec): yield

def part_reference(args, device):
    from vlmkit.generation import fuses_projections, reads_prompts_once
    model = reference_llm(args.tiny, device)
    prompts, rows = reference_batch(model, args, device)
    n, out = args.new_tokens, []
    def row(mode, n_rows, fn):
        fn()                                   # warm-up (the compiled cache compiles here)
        _, secs = timed(fn)
        out.append(dict(mode=mode, rows=n_rows, secs=secs, tok_s=n_rows * n / secs))
        print(f"  {mode}: {n_rows} rows x {n} tokens in {secs:.2f} s = {n_rows * n / secs:.0f} new tokens/s", flush=True)
    with torch.no_grad():
        if args.plain == 'all':
            row('transformers generate, 1 completion', 1, lambda: plain_generate(model, prompts[:1], n))
            row(f'transformers generate, G={args.group} in one call', args.group, lambda: plain_generate(model, rows[:args.group], n))
        if args.plain != 'none': row(f'transformers generate, {args.prompts} x G={args.group}', len(rows), lambda: plain_generate(model, rows, n))
        variants = [(cache, shared, fused, spec) for cache in args.caches for shared in switch_modes(args.share_prompt_reads)
                    for fused in switch_modes(args.fuse_projections) for spec in args.inductor]
        for cache, shared, fused, spec in variants:
            with reference_way(model, shared, fused, spec):
                compiled = cache == 'compiled'
                row(f'vlmkit generate, {args.prompts} x G={args.group}, {cache} cache' + (', shared prompt reads' if reads_prompts_once(model, compiled) else '')
                    + (', fused projections' if fuses_projections(model, compiled) else '')
                    + ('' if spec == 'default' else f', Inductor {spec}'), len(rows), lambda: vlmkit_generate(model, rows, n, cache))
        for dtype in greedy_dtypes(args) if variants else []:   # greedy rows against transformers' greedy generate of the same batch
            model.to(dtype)
            greedy = plain_generate(model, rows, n, do_sample=False)
            for r, (cache, shared, fused, spec) in zip(out[-len(variants):], variants):
                with reference_way(model, shared, fused, spec): ours = vlmkit_generate(model, rows, n, cache, do_sample=False)
                r[f'same_greedy_{dtype_name(dtype)}'], r[f'diverge_{dtype_name(dtype)}'] = agreement(ours, greedy)
                print(f"    {r['mode'].split(', ', 2)[-1]}, {dtype_name(dtype)}: greedy rows identical to transformers': "
                      f"{r[f'same_greedy_{dtype_name(dtype)}']} of {len(rows)} (median first difference at token {r[f'diverge_{dtype_name(dtype)}']})", flush=True)
    del model; release()
    return out

# ---- part 2: rollouts with crops ----

def rollout_prompts(fam, proc, args):
    from vlmkit.grpo import grounding_prompts, prompt_of
    return [prompt_of(c) for c in grounding_prompts(fam, proc, n=args.prompts, size=tuple(args.image_size))]

def call_ids(proc, args):
    tok = getattr(proc, 'tokenizer', proc)
    w, h = args.image_size
    return tok(f"<tool_call>Crop [{w // 8}, {h // 8}, {w // 2}, {h // 2}]</tool_call>", add_special_tokens=False)['input_ids']

def one_rollout(model, proc, fam, prompts, args, cache, do_sample=True, reuse=True):
    from vlmkit.rollout import ForcedText, rollout
    return rollout(model, proc, prompts, group_size=args.group, family=fam, max_new_tokens=args.new_tokens, max_tool_calls=1,
                   do_sample=do_sample, generator=torch.Generator(model.device).manual_seed(0), cache=cache,
                   logits_processor=[ForcedText(call_ids(proc, args), args.call_at)], reuse_cache=reuse)

def rollout_modes(args) -> list[tuple[str, bool]]:
    "(cache, reuse_cache) of each timed row: every cache going on from its KV cache after a call, and the last cache prefilling whole trajectories again."
    return [(c, True) for c in args.caches] + ([(args.caches[-1], False)] if args.whole_prefill else [])

def mode_name(cache:str, reuse:bool) -> str: return cache if reuse else f"{cache}, whole prefill after a call"

def part_rollout(name, args, device):
    from vlmkit.family import FAMILIES
    from vlmkit.generation import free_static_caches
    fam = FAMILIES[name]
    model, proc = build(fam, args.tiny, device)
    model.eval()
    prompts, rows, greedy = rollout_prompts(fam, proc, args), [], {}
    for cache, reuse in rollout_modes(args):
        mode = mode_name(cache, reuse)
        try:
            one_rollout(model, proc, fam, prompts, args, cache, reuse=reuse)             # warm-up (compiles)
            rolls, secs = timed(lambda: one_rollout(model, proc, fam, prompts, args, cache, reuse=reuse))
            tokens, tools = sum(r.n_generated for r in rolls), sum(r.tool_seconds for r in rolls)
            rows.append(dict(cache=cache, reuse=reuse, mode=mode, rollouts=len(rolls), tokens=tokens,
                             crops=sum(r.tool_calls - r.tool_errors for r in rolls), prefills=sum(r.prefills for r in rolls),
                             secs=secs, tool_secs=tools, tok_s=tokens / secs))
            print(f"  {mode}: {len(rolls)} rollouts, {tokens} new tokens, {rows[-1]['crops']} crops, {rows[-1]['prefills']} whole "
                  f"prefills in {secs:.2f} s (tools {tools:.2f} s) = {tokens / secs:.0f} new tokens/s", flush=True)
        except Exception as e:
            oom = isinstance(e, torch.OutOfMemoryError)
            if oom: print(f"  {mode}: out of memory: {str(e).splitlines()[0][:200]}", flush=True)
            else: traceback.print_exc()
            rows.append(dict(cache=cache, reuse=reuse, mode=mode, error='OOM' if oom else f"{type(e).__name__}: {e}"[:160])); release()
    ok = [r for r in rows if 'error' not in r]
    for dtype in greedy_dtypes(args):          # greedy trajectories (ids) of each mode against the first mode's
        free_static_caches(); release()        # the timed rows' static caches: a float32 model needs its own
        model.to(dtype)
        for r in ok:
            try: greedy[r['mode']] = [x.rendered.input_ids for x in one_rollout(model, proc, fam, prompts, args, r['cache'], False, r['reuse'])]
            except torch.OutOfMemoryError:
                greedy[r['mode']] = None; free_static_caches(); release()
            first = greedy[ok[0]['mode']]
            r[f'same_greedy_{dtype_name(dtype)}'], r[f'diverge_{dtype_name(dtype)}'] = \
                agreement(greedy[r['mode']], first) if greedy[r['mode']] is not None and first is not None else ('OOM', None)
        if ok: print(f"  {dtype_name(dtype)}: greedy trajectories identical to the {ok[0]['mode']} cache's: " +
                     ', '.join(f"{r['mode']} {r[f'same_greedy_{dtype_name(dtype)}']} of {r['rollouts']}" for r in ok), flush=True)
    free_static_caches()
    model.to(torch.get_default_dtype())
    return dict(family=name, label=FAMILY_LABELS.get(name, name), rows=rows), (model, proc, fam, prompts)

# ---- part 3: a GRPO step's time split ----

def part_step(built, args, cache, workdir):
    from vlmkit.grpo import GRPOConfig, grpo_trainer
    from vlmkit.sft import prepare_model
    model, proc, fam, prompts = built
    cfg = GRPOConfig(family=fam.name, output_dir=str(workdir/f'grpo-{fam.name}'), group_size=args.group, prompts_per_step=args.prompts,
                     max_new_tokens=args.new_tokens, max_tool_calls=1, max_steps=2, save_steps=1000, bf16=not args.tiny,
                     report_to='none', progress=False, lora_r=16, rollout_cache=cache, train=['(in memory)'],
                     checkpointing=not args.tiny, train_tokens=args.train_tokens)
    policy = prepare_model(model.train(), fam, cfg, verbose=False)
    from vlmkit.grpo import grounding_prompts
    def forced_rollout(*a, **kw):   # a fresh processor each rollout: every row crops once in every step
        from vlmkit.rollout import ForcedText, rollout
        return rollout(*a, logits_processor=[ForcedText(call_ids(proc, args), args.call_at)], **kw)
    trainer = grpo_trainer(cfg, policy, fam, proc, grounding_prompts(fam, proc, n=args.prompts, size=tuple(args.image_size)),
                           rollout_fn=forced_rollout)
    trainer.train()
    logs = [h for h in trainer.state.log_history if 'time/generation' in h]
    last = logs[-1]
    split = {k.split('/')[1]: last[k] for k in ('time/generation', 'time/tools', 'time/rewards', 'time/reference', 'time/training')}
    print(f"  step split ({cache} cache): " + ', '.join(f"{k} {v:.2f} s" for k, v in split.items()), flush=True)
    return dict(cache=cache, **split, tool_calls=last.get('tool_calls'), tool_errors=last.get('tool_errors'),
                mean_length=last.get('completions/mean_length'))

# ---- part 4: where a decode step's time goes ----

def part_profile(args, device):
    """vlmkit generate of the reference batch with the last of `--caches`: wall ms a step, the attention kernels' GPU ms a step
    (torch.profiler, CUDA only), and the model's step alone on a static cache (no sampling, no bookkeeping, no prefill)."""
    from torch.profiler import ProfilerActivity, profile
    from vlmkit.generation import cache_size, decode_step_fn, free_static_caches, shared_prefix_kwargs, static_cache
    model, cache, n = reference_llm(args.tiny, device), args.caches[-1], args.new_tokens
    _, rows = reference_batch(model, args, device)
    run = lambda: vlmkit_generate(model, rows, n, cache)
    cuda = device.type == 'cuda'
    with torch.no_grad():
        run()                                                        # warm-up (the compiled cache compiles here)
        _, secs = timed(run)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof: run(); sync()
        events = prof.key_averages()
        device_ms = lambda e: getattr(e, 'self_device_time_total', 0) / 1e3
        kernels = [e for e in events if not e.key.startswith(('## ', 'aten::'))]   # kernels, not the ranges and ops around them
        attention_ms = sum(device_ms(e) for e in kernels if any(k in e.key.lower() for k in ('sdpa', 'fmha', 'flash', 'attention'))) / n if cuda else None
        gpu_ms = sum(device_ms(e) for e in kernels) / n if cuda else None   # every kernel's GPU time: what the GPU is busy with a step
        busiest = [f"{e.key[:60]} {device_ms(e) / n:.3f}" for e in sorted(kernels, key=device_ms, reverse=True)[:30]] if cuda else []
        if cuda: print('  busiest kernels, ms a step:\n    ' + '\n    '.join(busiest), flush=True)
        alone = None
        if cache != 'dynamic':                                      # the step by itself: what the loop around it adds is the rest
            step = decode_step_fn(model, cache)                      # as the loop's steps call it (projections fused or not)
            kv, size = static_cache(model, len(rows), cache_size(args.prompt_len + n))
            ids, mask = rows[:, :1], torch.ones(len(rows), size, dtype=torch.long, device=device)
            pos = torch.full((len(rows), 1), args.prompt_len, device=device)
            # within share_prompt_reads (--share-prompt-reads), each group's prompt read once, as the loop's steps read it
            shared = shared_prefix_kwargs(model, [i // args.group for i in range(len(rows))], args.prompt_len, cache == 'compiled')
            one = lambda: step(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, past_key_values=kv, **shared)
            for _ in range(3): one()
            _, t = timed(lambda: [one() for _ in range(20)])
            alone = t / 20 * 1e3
    out = dict(cache=cache, rows=len(rows), new_tokens=n, step_ms=secs / n * 1e3, gpu_ms=gpu_ms, attention_ms=attention_ms, alone_ms=alone, busiest=busiest)
    print(f"  {cache}: {out['step_ms']:.2f} ms a step (prefill included)" + (f", kernels {gpu_ms:.2f} ms a step, attention's {attention_ms:.2f}" if cuda else '')
          + (f", the step alone {alone:.2f} ms" if alone is not None else ''), flush=True)
    del model; free_static_caches(); release()
    return out

# ---- tables ----

def same_cell(r:dict, dtype:str, count:str='rows') -> str:
    "'k of n' greedy rows identical in `dtype`, with the median first differing token of the others."
    if f'same_greedy_{dtype}' not in r: return ''
    if r[f'same_greedy_{dtype}'] == 'OOM': return 'out of memory'
    at = r.get(f'diverge_{dtype}')
    return f"{r[f'same_greedy_{dtype}']} of {r[count]}" + (f" (others differ from token {at})" if at is not None else '')

def tables(res, card, args):
    if res.get('reference'):
        ref4 = next((r for r in res['reference'] if r['mode'].startswith('transformers') and r['rows'] == args.prompts * args.group), None)
        names = [dtype_name(d) for d in greedy_dtypes(args)]
        print(f"\n| LLM reference ({card}) | rows | time s | new tokens/s | vs 4 x G plain | " + ' | '.join(f"greedy rows identical, {n}" for n in names) + " |")
        print("|---|---|---|---|---|" + "---|" * len(names))
        for r in res['reference']:
            vs = f"{r['tok_s'] / ref4['tok_s']:.2f}x" if ref4 else '-'
            print(f"| {r['mode']} | {r['rows']} | {r['secs']:.2f} | {r['tok_s']:.0f} | {vs} | " + ' | '.join(same_cell(r, n) for n in names) + " |")
    if res.get('rollout'):
        ref4 = next((r for r in res.get('reference') or [] if r['mode'].startswith('transformers') and r['rows'] == args.prompts * args.group), None)
        names = [dtype_name(d) for d in greedy_dtypes(args)]
        print(f"\n| family ({card}) | cache | rollouts | new tokens | crops | time s | tools s | new tokens/s | vs 4 x G plain | "
              + ' | '.join(f"greedy same as the first row, {n}" for n in names) + " |")
        print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(names))
        for f in res['rollout']:
            for r in f['rows']:
                if 'error' in r: print(f"| {f['label']} | {r['mode']} | | | | | | {r['error']} | |" + " |" * len(names)); continue
                vs = f"{r['tok_s'] / ref4['tok_s']:.1f}x" if ref4 else '-'
                print(f"| {f['label']} | {r['mode']} | {r['rollouts']} | {r['tokens']} | {r['crops']} | {r['secs']:.2f} | "
                      f"{r['tool_secs']:.2f} | {r['tok_s']:.0f} | {vs} | " + ' | '.join(same_cell(r, n, 'rollouts') for n in names) + " |")
    if res.get('step'):
        print(f"\n| family ({card}) | cache | generation s | tools s | rewards s | reference s | training s |")
        print("|---|---|---|---|---|---|---|")
        for f in res['step']:
            if 'error' in f: print(f"| {f['label']} | | {f['error']} | | | | |"); continue
            print(f"| {f['label']} | {f['cache']} | {f['generation']:.2f} | {f['tools']:.3f} | {f['rewards']:.3f} | {f['reference']:.2f} | {f['training']:.2f} |")
    if res.get('profile'):
        p, cell = res['profile'], (lambda v: '' if v is None else f"{v:.2f}")
        print(f"\n| decode step ({card}) | cache | rows | ms a step | kernels ms a step | attention kernels ms a step | step alone ms | busiest kernels, ms a step |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| vlmkit generate, LLM reference | {p['cache']} | {p['rows']} | {p['step_ms']:.2f} | {cell(p.get('gpu_ms'))} | {cell(p['attention_ms'])} | {cell(p['alone_ms'])} | "
              f"{'; '.join(p['busiest'][:3])} |")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='tiny models and counts on CPU, float32 (smoke test of the same paths)')
    ap.add_argument('--parts', default='reference,rollout,step,profile', help='comma-separated: reference, rollout, step, profile')
    ap.add_argument('--families', default=','.join(FAMILY_LABELS), help=f"comma-separated, from {', '.join(FAMILY_LABELS)}")
    ap.add_argument('--caches', help="the engine's KV caches compared, the first the greedy reference (default dynamic,compiled; --tiny: dynamic,static; "
                                     "'none': the reference part's plain rows alone)")
    ap.add_argument('--plain', default='all', choices=['all', 'batch', 'none'],
                    help="the reference part's plain transformers rows: one completion, G in one call and the prompts x G batch (all), the batch alone, or none")
    ap.add_argument('--prompts', type=int, help='prompts per batch (default 4; --tiny: 2)')
    ap.add_argument('--group', type=int, help='completions per prompt, G (default 8; --tiny: 2)')
    ap.add_argument('--new-tokens', type=int, help='new tokens a completion (default 256; --tiny: 48)')
    ap.add_argument('--prompt-len', type=int, help='reference LLM prompt tokens (default 1024; --tiny: 16)')
    ap.add_argument('--call-at', type=int, help='the forced crop call starts after this many tokens (default 32; --tiny: 2)')
    ap.add_argument('--image-size', type=int, nargs=2, help='synthetic image width height (default 640 480; --tiny: 192 144)')
    ap.add_argument('--no-greedy-fp32', dest='greedy_fp32', action='store_false',
                    help='skip the greedy checks in float32 (the models cast to float32 after the timings)')
    ap.add_argument('--no-whole-prefill', dest='whole_prefill', action='store_false',
                    help="leave out the rollout row of the last cache that prefills whole trajectories after a call (rollout(reuse_cache=False))")
    ap.add_argument('--train-tokens', type=int, help="the step part's GRPOConfig.train_tokens: rollouts trained in packed rows of at most this many tokens (default: one row)")
    ap.add_argument('--share-prompt-reads', nargs='?', const='on', default='auto', choices=['auto', 'off', 'on', 'both'],
                    help="a group's prompt keys and values read once for its rows (vlmkit.generation.share_prompt_reads): 'auto' (default) "
                         "as vlmkit decides (on where its Triton decode kernel runs), 'on' (the flag alone), 'off', or 'both': the reference "
                         "part's vlmkit rows without and with it, side by side, the other parts with it")
    ap.add_argument('--fuse-projections', nargs='?', const='on', default='auto', choices=['auto', 'off', 'on', 'both'],
                    help="compiled steps compute each layer's query/key/value projections as one product, and gate/up as one "
                         "(vlmkit.generation.fuse_projections): 'auto' (default) as vlmkit decides (on a GPU), 'on', 'off', or 'both': "
                         "the reference part's vlmkit rows without and with it, side by side, the other parts as the last")
    ap.add_argument('--inductor', nargs='+', default=['default'],
                    help="ways to compile the reference part's vlmkit rows, side by side: 'default', or 'name=value,...' of "
                         "torch._inductor.config (e.g. max_autotune_gemm=True, combo_kernels=True, coordinate_descent_tuning=True)")
    ap.add_argument('--decode-tuning', help="the Triton decode kernel's tuning (vlmkit.attention.DECODE_TUNING) for this run: a JSON object, "
                                            "or the --json file of `decode_attention_gpu.py --kernel-sweep` (its fastest at its first positions)")
    ap.add_argument('--json', help='write the results here (after each part)')
    args = ap.parse_args()
    for k, full, tiny in [('prompts', 4, 2), ('group', 8, 2), ('new_tokens', 256, 48), ('prompt_len', 1024, 16), ('call_at', 32, 2),
                          ('image_size', [640, 480], [192, 144]), ('caches', 'dynamic,compiled', 'dynamic,static')]:
        if getattr(args, k) is None: setattr(args, k, tiny if args.tiny else full)
    args.caches = [] if args.caches == 'none' else args.caches.split(',')
    import torch._inductor.config as config
    if bad := [k for spec in args.inductor for k in parse_inductor(spec) if not hasattr(config, k)]:
        ap.error(f"--inductor: torch._inductor.config has no {bad}")
    parts, families = args.parts.split(','), args.families.split(',')
    if bad := [p for p in parts if p not in ('reference', 'rollout', 'step', 'profile')]: ap.error(f"--parts: unknown {bad}")
    if bad := [f for f in families if f not in FAMILY_LABELS]: ap.error(f"--families: unknown {bad}; choose from {', '.join(FAMILY_LABELS)}")
    from vlmkit.generation import CACHES, fuse_projections, share_prompt_reads
    if bad := [c for c in args.caches if c not in CACHES]: ap.error(f"--caches: unknown {bad}; choose from {', '.join(CACHES)}")
    with share_prompt_reads(switch_modes(args.share_prompt_reads)[-1]), fuse_projections(switch_modes(args.fuse_projections)[-1]): run(args, parts, families)   # 'both': the other parts with it

def decode_tuning(spec:str) -> dict:
    "`--decode-tuning`: a JSON object, or a kernel sweep's --json file (the fastest tuning at its first positions)."
    if spec.lstrip().startswith('{'): return json.loads(spec)
    fastest = json.loads(Path(spec).read_text())['fastest']
    return fastest[min(fastest, key=int)]

def run(args, parts, families):
    device = torch.device('cpu' if args.tiny or not torch.cuda.is_available() else 'cuda')
    dtype = torch.float32 if args.tiny else torch.bfloat16
    torch.set_default_dtype(dtype)
    if args.decode_tuning:
        from vlmkit.attention import DECODE_TUNING
        DECODE_TUNING.update(decode_tuning(args.decode_tuning))
    card = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'
    import transformers
    print(f"{card}; torch {torch.__version__}, transformers {transformers.__version__}; {dtype}"
          + switch_note(args.share_prompt_reads, 'share_prompt_reads', 'each row reads its own prompt copy')
          + switch_note(args.fuse_projections, 'fuse_projections', 'projections each their own product')
          + (f"; decode kernel {DECODE_TUNING}" if args.decode_tuning else ""), flush=True)
    res, t0, workdir = {}, time.perf_counter(), Path(tempfile.mkdtemp(prefix='grpo_rollout_'))
    save = lambda: args.json and Path(args.json).write_text(json.dumps(dict(card=card, args=vars(args), results=res), indent=1))
    if 'reference' in parts:
        print("LLM reference (Qwen3-1.7B-shaped):", flush=True)
        res['reference'] = part_reference(args, device); save()
    for name in families if {'rollout', 'step'} & set(parts) else []:
        print(f"{FAMILY_LABELS[name]} ({name}):", flush=True)
        f, built = part_rollout(name, args, device) if 'rollout' in parts else (None, None)
        if f: res.setdefault('rollout', []).append(f); save()
        if 'step' in parts:
            if built is None:
                from vlmkit.family import FAMILIES
                fam = FAMILIES[name]; model, proc = build(fam, args.tiny, device)
                built = (model, proc, fam, rollout_prompts(fam, proc, args))
            ok = [r for r in (f['rows'] if f else []) if 'error' not in r]
            cache = max((r for r in ok if r['reuse']), key=lambda r: r['tok_s'])['cache'] if any(r['reuse'] for r in ok) else args.caches[-1]
            try: res.setdefault('step', []).append(dict(label=FAMILY_LABELS[name], **part_step(built, args, cache, workdir)))
            except Exception as e:
                traceback.print_exc(); res.setdefault('step', []).append(dict(label=FAMILY_LABELS[name], error=f"{type(e).__name__}: {e}"[:160]))
            save()
        del built; release()
    if 'profile' in parts:
        print("Decode step profile (the LLM reference):", flush=True)
        res['profile'] = part_profile(args, device); save()
    tables(res, card, args)
    print(f"total {time.perf_counter() - t0:.0f} s")
    bad = [f"{f['family']}/{r['mode']}: {r['error']}" for f in res.get('rollout', []) for r in f['rows'] if r.get('error', 'OOM') != 'OOM']
    bad += [f"{s['label']} step: {s['error']}" for s in res.get('step', []) if 'error' in s]
    if bad: raise SystemExit(f"rows failed: {', '.join(bad)}")

if __name__ == '__main__': main()
