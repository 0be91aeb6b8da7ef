"""RefCOCO grounding evaluation speed of every family: `vlmkit.grounding.evaluate_grounding` one ref at a time against
batches of `--batch-size`, side by side in one run, on the same refs and weights, with the answers checked equal.

Models (`--families`, default all three): random weights of a released model's shape with the released image settings
over the family's tiny tokenizer, built by `bench/sft_gpu.py`'s builders (InternVL3.5-2B, Qwen2.5-VL-3B and
Ovis2.5-2B shapes), bf16 on the GPU, eval mode. Random weights never write the stop token, so every answer runs to
`--max-new-tokens` (default 32): each row decodes the same number of steps in both modes, the work of a model whose
answers are that long.

Data: `vlmkit.refcoco.make_synthetic_refcoco` (shape images of `--image-size`, default 640x480, about COCO's), the first
`--refs` referring expressions (default 64) of its 8 evaluation splits. Each mode runs the whole evaluation as a user
does (render every prompt from its image file, decode greedily, read and score each answer, one JSON line per ref),
after one warm-up batch; refs/s is refs over wall-clock seconds (CUDA synchronised by the answers' copy to the host).

Columns: refs/s, speed-up over one at a time, and "same answers": how many refs get the identical decoded text in both
modes (greedy; batched rows are left-padded into one KV cache, so bf16 kernels may round differently and flip a
near-tie). Target: batches >= 4x one at a time.

    python bench/refcoco_eval_gpu.py                      # GPU: three families, 64 refs, batches of 16
    python bench/refcoco_eval_gpu.py --families qwen2_5_vl --batch-size 32 --json eval.json
    python bench/refcoco_eval_gpu.py --tiny               # CPU, seconds: the same code path and table, tiny models, 6 refs, batches of 3
"""
import argparse, json, sys, tempfile, time, traceback, warnings
from pathlib import Path
import torch
warnings.filterwarnings('ignore', category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_gpu import FAMILY_LABELS, build, release   # one definition of each released shape, shared with the SFT benchmark


def timed(model, proc, fam, refs, batch_size, max_new_tokens, out):
    "(records, seconds) of one evaluation of `refs` written to `out`, after a warm-up batch."
    from vlmkit.grounding import evaluate_grounding
    evaluate_grounding(model, proc, refs[:batch_size], family=fam, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t = time.perf_counter()
    recs = evaluate_grounding(model, proc, refs, out=out, family=fam, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              progress=False, resume=False)
    return recs, time.perf_counter() - t

def bench_family(name, args, refs, device, workdir):
    from vlmkit.family import FAMILIES
    fam, t0 = FAMILIES[name], time.perf_counter()
    print(f"{FAMILY_LABELS.get(name, name)} ({name}):", flush=True)
    model, proc = build(fam, args.tiny, device)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"  built {params / 1e9:.2f}B params in {time.perf_counter() - t0:.1f} s", flush=True)
    rows, texts = [], {}
    for mode, bs in [('one at a time', 1), (f'batches of {args.batch_size}', args.batch_size)]:
        try:
            recs, secs = timed(model, proc, fam, refs, bs, args.max_new_tokens, workdir/f'{name}-{bs}.jsonl')
            texts[mode] = [r['text'] for r in recs]
            errors = sum(bool(r['error']) and not r['error'].startswith('parse:') for r in recs)
            rows.append(dict(mode=mode, batch_size=bs, refs=len(recs), secs=secs, refs_s=len(recs) / secs, errors=errors))
            print(f"  {mode}: {len(recs)} refs in {secs:.1f} s ({len(recs) / secs:.2f} refs/s)", flush=True)
        except torch.OutOfMemoryError:
            rows.append(dict(mode=mode, batch_size=bs, error='OOM')); release()
        except Exception as e:
            traceback.print_exc(); rows.append(dict(mode=mode, batch_size=bs, error=f"{type(e).__name__}: {e}"[:120]))
    if len(texts) == 2:
        a, b = texts.values()
        rows[1]['same'] = sum(x == y for x, y in zip(a, b))
    del model; release()
    return dict(family=name, label=FAMILY_LABELS.get(name, name), params=params, rows=rows)

def table(results, card, args):
    print(f"\n| family ({card}) | mode | refs | time s | refs/s | speed-up | same answers |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        base = res['rows'][0] if 'error' not in res['rows'][0] else None
        for r in res['rows']:
            if 'error' in r: print(f"| {res['label']} | {r['mode']} | | | {r['error']} | | |"); continue
            speed = f"{r['refs_s'] / base['refs_s']:.2f}x" if base else '-'
            same = f"{r['same']} of {r['refs']}" if 'same' in r else '(reference)'
            print(f"| {res['label']} | {r['mode']} | {r['refs']} | {r['secs']:.2f} | {r['refs_s']:.2f} | {speed} | {same} |")
    print(f"greedy, {args.max_new_tokens} new tokens an answer; speed-up against the family's one-at-a-time row; same answers: "
          f"refs whose decoded text is identical in both modes")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='tiny models and counts on CPU, float32 (smoke test of the same path)')
    ap.add_argument('--families', default=','.join(FAMILY_LABELS), help=f"comma-separated, from {', '.join(FAMILY_LABELS)}")
    ap.add_argument('--refs', type=int, help='referring expressions evaluated (default 64; --tiny: 6)')
    ap.add_argument('--batch-size', type=int, help='refs decoded together in the batched row (default 16; --tiny: 3)')
    ap.add_argument('--max-new-tokens', type=int, help='tokens an answer (default 32; --tiny: 6)')
    ap.add_argument('--image-size', type=int, nargs=2, help='synthetic image width height (default 640 480; --tiny: 160 120)')
    ap.add_argument('--json', help='write the results here (after each family)')
    args = ap.parse_args()
    for k, full, tiny in [('refs', 64, 6), ('batch_size', 16, 3), ('max_new_tokens', 32, 6), ('image_size', [640, 480], [160, 120])]:
        if getattr(args, k) is None: setattr(args, k, tiny if args.tiny else full)
    families = args.families.split(',')
    unknown = [f for f in families if f not in FAMILY_LABELS]
    if unknown: ap.error(f"--families: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(FAMILY_LABELS)}")
    device = torch.device('cpu' if args.tiny or not torch.cuda.is_available() else 'cuda')
    dtype = torch.float32 if args.tiny else torch.bfloat16
    torch.set_default_dtype(dtype)
    card = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'
    import transformers
    from vlmkit.grounding import load_splits
    from vlmkit.refcoco import make_synthetic_refcoco
    print(f"{card}; torch {torch.__version__}, transformers {transformers.__version__}; {dtype}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix='refcoco_eval_'))
    n_images = max(4, args.refs // 3)
    root = make_synthetic_refcoco(workdir/'data', n_images=n_images, size=tuple(args.image_size))
    refs = load_splits(root, image_root=root/'images')[:args.refs]
    print(f"{len(refs)} refs of the synthetic set ({n_images} images of {args.image_size[0]}x{args.image_size[1]})", flush=True)
    t0, results = time.perf_counter(), []
    for name in families:
        results.append(bench_family(name, args, refs, device, workdir))
        if args.json: Path(args.json).write_text(json.dumps(dict(card=card, args=vars(args), results=results), indent=1))
    table(results, card, args)
    print(f"total {time.perf_counter() - t0:.0f} s")
    bad = [f"{res['family']}/{r['mode']}: {r['error']}" for res in results for r in res['rows'] if r.get('error', 'OOM') != 'OOM']
    bad += [f"{res['family']}/{r['mode']}: {r['errors']} refs with image/render errors" for res in results for r in res['rows'] if r.get('errors')]
    if bad: raise SystemExit(f"rows failed: {', '.join(bad)}")

if __name__ == '__main__': main()
