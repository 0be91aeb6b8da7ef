"""InternVL3.5 image tiling on CPU: images/s of vlmkit's fast path vs the official path and transformers' processors.

Competitors, one image at a time, each from the same decoded RGB PIL image:
* official path: a straightforward reimplementation of the model card's `load_image` minus the file read:
  `dynamic_preprocess` (PIL BICUBIC resize to the grid, PIL crops, thumbnail) and, per tile, torchvision's
  `ToTensor` + `Normalize` arithmetic (copy to a tensor, CHW, float, /255, clone, -mean, /std), then `torch.stack`;
* transformers 5.x `GotOcr2ImageProcessorPil` (PIL backend) and `GotOcr2ImageProcessor` (torchvision backend,
  only where torchvision is importable), configured from InternVL3.5's `preprocessor_config.json` values with
  `crop_to_patches=True`, `max_patches=12`;
* vlmkit: `vlmkit.internvl.tiling.load_image`: grid and thumbnail resized by `vlmkit.resample` (Pillow's arithmetic,
  bit for bit, in numba-compiled vectorised loops, one horizontal pass shared by both; Pillow's own resize where numba
  is missing), each finished strip converted straight into the float tiles; with `threads=1` and with `threads=N`
  (`--threads`, default: all cores), each pass cut into row strips resized on N threads;
* vlmkit's batched loader: `tile_loader(images, num_workers=W)` (`--workers`, default: all cores), a DataLoader
  whose W worker processes each tile whole images on one thread; images/s over the whole set, worker start-up
  included (each tensor arrives in the main process through shared memory).

torch runs with `--torch-threads` intra-op threads (default 1, as in DataLoader workers): on a shared box, OpenMP
threads that find no free core slow every elementwise op of every torch-based path by 10x or more.

The same N synthetic images of real-world sizes (phone photos, screenshots, documents, panoramas), max_num 12.
Images are generated one by one (untimed) and every path runs on each in turn, best of `--repeats` per image, so
machine noise hits all paths alike. Every output is compared with the official path's tensor (the loader's, in
an untimed first pass over the set, through a SHA-1 of each official tensor's bytes).
The header line says whether numba ran the resizes.
Run: `python bench/internvl_tiling_cpu.py [--n 200] [--repeats 2] [--threads N ...] [--workers W ...]`;
`--tiny` (what CI runs): the same paths, checks and table on 4 images (one of each kind) at 1/8 of the sizes, one
repeat, threads and workers 2, in seconds.
"""
import argparse, hashlib, importlib.util, os, platform, time
import numpy as np
import torch
from PIL import Image
from vlmkit.images import synthetic_image
from vlmkit.internvl.tiling import IMAGENET_MEAN, IMAGENET_STD, load_image, plan_tiles, tile_loader
from vlmkit.resample import fast_resize_is_exact

# (width, height)
SIZES_WH = {
    'phone photo': [(4032, 3024), (3024, 4032), (4000, 3000), (4080, 3072), (3264, 2448), (2448, 3264)],
    'screenshot':  [(1920, 1080), (2560, 1440), (1170, 2532), (1366, 768), (2880, 1800), (1080, 2400)],
    'document':    [(2480, 3508), (1700, 2200), (1240, 1754), (2550, 3300), (1654, 2339)],
    'panorama':    [(8000, 2000), (6000, 1500), (10000, 2000), (5472, 1824)],
}
ALL_SIZES = [(k, s) for k, v in SIZES_WH.items() for s in v]


def synthetic(i:int, scale:int=1) -> tuple[str, Image.Image]:
    "Image i: vlmkit's seeded synthetic scene at 1/4 scale, upsampled to the real-world size (divided by `scale`), plus seeded noise."
    kind, (w, h) = ALL_SIZES[i % len(ALL_SIZES)]
    w, h = w // scale, h // scale
    small = synthetic_image(i, (max(64, w // 4), max(64, h // 4)))[0].resize((w, h), Image.Resampling.BILINEAR)
    noise = np.random.default_rng(i).integers(-12, 13, (64, 64, 3))
    a = np.asarray(small).astype(np.int16) + np.tile(noise, (-(-h // 64), -(-w // 64), 1))[:h, :w]
    return kind, Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


# ---- the official path, reimplemented straightforwardly (torchvision's tensor arithmetic without torchvision) ----
_MEAN, _STD = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)

def _to_tensor(pic):
    "torchvision `ToTensor` on an RGB PIL image."
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True)).view(pic.size[1], pic.size[0], 3)
    return img.permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)

def _normalize(t):
    "torchvision `Normalize` (not in place: it clones first)."
    return t.clone().sub_(_MEAN.view(-1, 1, 1)).div_(_STD.view(-1, 1, 1))

def _official_dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=True):
    w, h = image.size
    ratios = sorted(set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                        if min_num <= i * j <= max_num), key=lambda x: x[0] * x[1])
    best_diff, best, ar = float('inf'), (1, 1), w / h
    for r in ratios:
        d = abs(ar - r[0] / r[1])
        if d < best_diff: best_diff, best = d, r
        elif d == best_diff and w * h > 0.5 * image_size * image_size * r[0] * r[1]: best = r
    tw, th = image_size * best[0], image_size * best[1]
    resized = image.resize((tw, th))
    cols = tw // image_size
    tiles = [resized.crop(((i % cols) * image_size, (i // cols) * image_size,
                           (i % cols + 1) * image_size, (i // cols + 1) * image_size)) for i in range(best[0] * best[1])]
    if use_thumbnail and len(tiles) != 1: tiles.append(image.resize((image_size, image_size)))
    return tiles

def official_load_image(image, max_num=12):
    tiles = _official_dynamic_preprocess(image, max_num=max_num)
    return torch.stack([_normalize(_to_tensor(t)) for t in tiles])


def hf_backends() -> dict:
    "{label: class name} of transformers' GotOcr2 image processors importable here (names changed in 5.2x)."
    import transformers
    have = lambda n: hasattr(transformers, n) and not type(getattr(transformers, n)).__name__.startswith('Dummy')
    tv = importlib.util.find_spec('torchvision') is not None
    if hasattr(transformers, 'GotOcr2ImageProcessorPil'):  # 5.2x: ...Pil = PIL backend, plain name = torchvision
        out = {'PIL backend': 'GotOcr2ImageProcessorPil'}
        if tv: out['torchvision backend'] = 'GotOcr2ImageProcessor'
    else:                                                   # older 5.x: plain = PIL/numpy, ...Fast = torchvision
        out = {'PIL backend': 'GotOcr2ImageProcessor'}
        if tv and have('GotOcr2ImageProcessorFast'): out['torchvision backend'] = 'GotOcr2ImageProcessorFast'
    return out

def hf_processor(cls_name):
    import transformers
    proc = getattr(transformers, cls_name)(
        size={'height': 448, 'width': 448}, resample=3, do_rescale=True, rescale_factor=1/255, do_normalize=True,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), crop_to_patches=True, min_patches=1,
        max_patches=12, do_convert_rgb=True)
    return lambda im: proc(images=[im], return_tensors='pt')['pixel_values']


def with_torch_threads(fn, threads:int):
    "`fn` run with `threads` torch intra-op threads."
    def run(im):
        old = torch.get_num_threads(); torch.set_num_threads(threads)
        try: return fn(im)
        finally: torch.set_num_threads(old)
    return run


def numba_version() -> str: import numba; return numba.__version__

def fingerprint(t:torch.Tensor) -> bytes: return hashlib.sha1(t.contiguous().numpy().data).digest()

def time_loader(images:list, want:list[bytes], workers:int, batch_size:int, repeats:int) -> tuple[float, bool]:
    "Best wall time of `repeats` passes of `tile_loader` over `images`, after an untimed pass checking every tensor."
    same, best = True, float('inf')
    for r in range(repeats + 1):
        t0, k = time.perf_counter(), 0
        for b in tile_loader(images, batch_size=batch_size, num_workers=workers, max_num=12):
            if r: continue
            for pv in b['pixel_values'].split(b['num_tiles'].tolist()): same &= fingerprint(pv) == want[k]; k += 1
        if r: best = min(best, time.perf_counter() - t0)
        else: same &= k == len(images)
    return best, same


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, help='images (default 200; --tiny: 4)')
    ap.add_argument('--repeats', type=int, help='timed runs per image, the best counts (default 2; --tiny: 1)')
    ap.add_argument('--torch-threads', type=int, default=1)
    ap.add_argument('--threads', type=int, nargs='+', help="vlmkit thread counts to run besides 1 (default: all cores; --tiny: 2)")
    ap.add_argument('--workers', type=int, nargs='*', help="tile_loader worker counts, none: skip (default: all cores; --tiny: 2)")
    ap.add_argument('--batch-size', type=int, default=1, help="tile_loader batch size (a batch is one worker's unit of work)")
    ap.add_argument('--tiny', action='store_true', help='smoke test: few images at 1/8 of the sizes, one repeat')
    args = ap.parse_args()
    for k, full, tiny in [('n', 200, 4), ('repeats', 2, 1), ('threads', [os.cpu_count() or 1], [2]), ('workers', [os.cpu_count() or 1], [2])]:
        if getattr(args, k) is None: setattr(args, k, tiny if args.tiny else full)
    scale = 8 if args.tiny else 1
    torch.set_num_threads(args.torch_threads)
    import transformers

    paths = {'official path (PIL crops + per-tile ToTensor/Normalize)': official_load_image}
    for label, cls in hf_backends().items():
        paths[f'transformers {cls} ({label})'] = hf_processor(cls)
        if 'torchvision' in label:  # its resize is a torch op: give it the threads vlmkit gets
            for t in sorted(set(args.threads) - {1}):
                paths[f'transformers {cls} ({label}), torch threads={t}'] = with_torch_threads(hf_processor(cls), t)
    paths['vlmkit load_image, threads=1'] = lambda im: load_image(im, max_num=12, threads=1)
    for t in sorted(set(args.threads) - {1}):
        paths[f'vlmkit load_image, threads={t}'] = lambda im, t=t: load_image(im, max_num=12, threads=t)

    warm = synthetic(0, scale)[1].resize((640, 480))
    for fn in paths.values(): fn(warm)
    secs = {k: 0.0 for k in paths}
    maxdiff, sumdiff = {k: 0.0 for k in paths}, {k: 0.0 for k in paths}
    identical = {k: True for k in paths}
    tiles, kinds, images, want = 0, {}, [], []
    L = len(ALL_SIZES)  # --tiny: images spread over the kinds; else every size in turn
    for i in ([k * L // args.n + L // (2 * args.n) for k in range(args.n)] if args.tiny else range(args.n)):
        kind, im = synthetic(i, scale)
        kinds[kind] = kinds.get(kind, 0) + 1
        if args.workers: images.append(im)  # kept for the loader rows (~30 MB each as a Pillow image)
        ref = None
        for name, fn in paths.items():
            best = float('inf')
            for _ in range(args.repeats):
                t0 = time.perf_counter(); out = fn(im); best = min(best, time.perf_counter() - t0)
            secs[name] += best
            if ref is None: ref = out; tiles += out.shape[0]; want.append(fingerprint(out))
            same_shape = out.shape == ref.shape
            identical[name] &= same_shape and torch.equal(out, ref)
            d = (out - ref).abs() if same_shape else torch.tensor([float('inf')])
            maxdiff[name] = max(maxdiff[name], d.max().item()); sumdiff[name] += d.mean().item()
        del im, ref, out
    for w in args.workers:
        name = f'vlmkit tile_loader, num_workers={w}, batch_size={args.batch_size} (whole set)'
        secs[name], identical[name] = time_loader(images, want, w, args.batch_size, args.repeats)
    del images

    names = [k for k in secs if 'tile_loader' not in k]
    t_off, t_vlm, t_vlm1 = secs[names[0]], secs[names[-1]], secs['vlmkit load_image, threads=1']
    fastest_hf = min((t for k, t in secs.items() if k.startswith('transformers')), default=None)
    sizes = [(w // scale) * (h // scale) for _, (w, h) in ALL_SIZES]
    print(f"InternVL3.5 tiling (max_num 12, 448 px tiles + thumbnail), {args.n} synthetic images "
          f"({', '.join(f'{v} {k}s' for k, v in kinds.items())}; {min(sizes)/1e6:.1f}-{max(sizes)/1e6:.1f} MP"
          f"{', --tiny: 1/8 of the real-world sizes' if args.tiny else ''}), {tiles} tiles; from decoded RGB PIL images; "
          f"best of {args.repeats} per image")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end; torch {torch.__version__} with {torch.get_num_threads()} thread(s); "
          f"transformers {transformers.__version__}; Pillow {Image.__version__}; vlmkit resizes with "
          f"{'numba ' + numba_version() if fast_resize_is_exact() else 'Pillow (no numba)'}; one image at a time; torchvision "
          f"{'installed' if importlib.util.find_spec('torchvision') else 'NOT installed: its backend is not measured'}\n")
    print("| path | images/s | ms/image | vlmkit speed-up | output vs official path |")
    print("|---|---:|---:|---:|---|")
    for name, t in secs.items():
        check = 'reference' if name == names[0] else ('identical' if identical[name] else 'DIFFERENT' if name not in maxdiff
                else f'max abs diff {maxdiff[name]:.4f}, mean abs diff {sumdiff[name]/args.n:.1e}')
        print(f"| {name} | {args.n/t:.2f} | {1e3*t/args.n:.1f} | {t/t_vlm:.2f}x | {check} |")
    for label, t in [(k, secs[k]) for k in secs if k.startswith('vlmkit')][::-1]:
        print(f"\n{label}: {t_off/t:.2f}x the official path (target >= 3x)"
              + (f", {fastest_hf/t:.2f}x the fastest transformers backend (target >= 1.5x)" if fastest_hf else ''), end='')
    print()
    bad = [k for k in secs if not identical[k] and 'torchvision' not in k]
    if bad: raise SystemExit(f"outputs differ from the official path: {bad}")

if __name__ == '__main__':
    main()
