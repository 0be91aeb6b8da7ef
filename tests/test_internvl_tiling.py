"""InternVL tiling: full fixture sweeps, fast == reference properties, HF processor agreement, degenerate inputs, video frames."""
import io, json
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from PIL import Image

from vlmkit.testing import require_fixture, fixtures_dir
from vlmkit.images import ImageLoadError
from vlmkit.video import make_test_video, sample_frames
from vlmkit.internvl.tiling import (VARIANTS, TileDataset, TileExplorer, collate_tiles, dynamic_preprocess,
    load_image, load_video, official_pixels, plan_tiles, target_ratios, tile_loader, tiles_fast,
    tiles_reference)

BICUBIC, LANCZOS = Image.Resampling.BICUBIC, Image.Resampling.LANCZOS
# every official tile tensor the fixture folder holds (the public set has portrait, landscape and tiny)
_FIXTURES = fixtures_dir()
CASES = sorted(p.stem.removeprefix('internvl_tiles_') for p in (_FIXTURES/'internvl').glob('internvl_tiles_*.pt')) \
        if _FIXTURES else ['portrait', 'landscape', 'tiny']


def _tiling():
    return json.loads(require_fixture('internvl/internvl_tiling.json').read_text())


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_official_order_of_candidate_grids():
    for s in _tiling()['settings']:
        assert target_ratios(s['min_num'], s['max_num']) == [tuple(r) for r in s['target_ratios_in_official_order']]


def test_every_tiling_row():
    d = _tiling()
    assert len(d['entries']) == len(d['sizes_hw']) * len(d['settings'])
    for e in d['entries']:
        p = plan_tiles(e['width'], e['height'], e['min_num'], e['max_num'], e['image_size'], e['use_thumbnail'])
        got = dict(grid_cols_rows=[p.cols, p.rows], blocks=p.blocks, num_tiles=p.num_tiles,
                   thumbnail_added=p.thumbnail, resized_width=p.resized_size[0], resized_height=p.resized_size[1],
                   num_image_tokens=p.num_tokens(), aspect_ratio=e['width'] / e['height'])
        assert got == {k: e[k] for k in got}, e


def test_every_tiling_row_through_dynamic_preprocess():
    "The PIL tiles themselves: count, size and order, on solid images of every fixture size (up to 4 MP)."
    for e in _tiling()['entries']:
        if e['width'] * e['height'] > 4_000_000: continue
        img = Image.new('RGB', (e['width'], e['height']), (10, 20, 30))
        tiles = dynamic_preprocess(img, e['min_num'], e['max_num'], e['image_size'], e['use_thumbnail'])
        assert len(tiles) == e['num_tiles'], e
        assert {t.size for t in tiles} == {tuple(s) for s in e['tile_sizes_unique']}


@pytest.mark.parametrize('name', CASES)
@pytest.mark.parametrize('variant,key', [('model_card', 'official_model_card'), ('research_fork', 'mirror_utils_preprocess')])
def test_tile_tensors_equal_official(name, variant, key):
    p = require_fixture(f'internvl/internvl_tiles_{name}.pt')
    case = torch.load(p, weights_only=True)
    want = official_pixels(case, key)
    assert list(want.shape) == case[key]['pixel_values_shape']
    path = p.parent / case['image_file']
    img = Image.open(path).convert('RGB')
    opts = VARIANTS[variant]
    ref = tiles_reference(img, 1, 12, 448, opts['use_thumbnail'], opts['resample'])
    fast = tiles_fast(img, 1, 12, 448, opts['use_thumbnail'], opts['resample'])
    loaded = load_image(path, variant=variant)
    for got in (ref, fast, loaded):
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-6
    assert torch.equal(ref, fast) and torch.equal(fast, loaded)
    assert abs(fast.double().sum().item() - case[key]['pixel_values_sum_f64']) < 1e-3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(1, 700), h=st.integers(1, 700), min_num=st.integers(1, 3), extra=st.integers(0, 8),
       thumb=st.booleans(), lanczos=st.booleans(), seed=st.integers(0, 9))
def test_fast_path_is_bit_identical_to_reference(w, h, min_num, extra, thumb, lanczos, seed):
    img = _noise(w, h, seed)
    rs = LANCZOS if lanczos else BICUBIC
    ref = tiles_reference(img, min_num, min_num + extra, 448, thumb, rs)
    fast = tiles_fast(img, min_num, min_num + extra, 448, thumb, rs)
    assert torch.equal(ref, fast)
    assert ref.shape[0] == plan_tiles(w, h, min_num, min_num + extra, 448, thumb).num_tiles


def _hf_canvas():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas
    return get_optimal_tiled_canvas


@settings(max_examples=300, deadline=None)
@given(w=st.integers(1, 20000), h=st.integers(1, 20000), min_num=st.integers(1, 4), extra=st.integers(0, 30))
def test_grid_agrees_with_transformers(w, h, min_num, extra):
    "HF sorts its candidates differently, yet picks the same grid (ties included), as the fixtures record."
    assert _hf_canvas()((h, w), (448, 448), min_num, min_num + extra) == \
        (lambda p: (p.cols, p.rows))(plan_tiles(w, h, min_num, min_num + extra))


def _hf_pil_processor():
    from transformers import GotOcr2ImageProcessorPil
    return GotOcr2ImageProcessorPil.from_pretrained(str(require_fixture('tokenizers/internvl3_5')))


@pytest.mark.parametrize('name', CASES)
def test_hf_pil_backend_agrees(name):
    proc = _hf_pil_processor()
    p = require_fixture(f'internvl/internvl_tiles_{name}.pt')
    img = Image.open(p.parent / torch.load(p, weights_only=True)['image_file']).convert('RGB')
    out = proc(images=[img], crop_to_patches=True, return_tensors='pt')
    mine = load_image(img)
    assert out['num_patches'].tolist() == [mine.shape[0]]
    assert torch.equal(out['pixel_values'], mine)


def test_hf_pil_backend_agrees_on_many_sizes():
    proc = _hf_pil_processor()
    for i, (w, h) in enumerate([(1280, 720), (333, 517), (1, 500), (500, 1), (2200, 800), (7, 8), (3000, 40)]):
        img = _noise(w, h, i)
        out = proc(images=[img], crop_to_patches=True, return_tensors='pt')
        assert torch.equal(out['pixel_values'], load_image(img)), (w, h)


def test_hf_torchvision_backend_drift():
    "Measured where torchvision is importable (not in the dev environment): same tiles, pixels a few uint8 steps off."
    pytest.importorskip('torchvision')
    from transformers import GotOcr2ImageProcessor
    proc = GotOcr2ImageProcessor.from_pretrained(str(require_fixture('tokenizers/internvl3_5')))
    for name in CASES:
        p = require_fixture(f'internvl/internvl_tiles_{name}.pt')
        img = Image.open(p.parent / torch.load(p, weights_only=True)['image_file']).convert('RGB')
        out = proc(images=[img], crop_to_patches=True, return_tensors='pt')
        mine = load_image(img)
        assert out['pixel_values'].shape == mine.shape
        assert (out['pixel_values'] - mine).abs().max().item() <= 4 * (1 / 255 / 0.224)


# ---- degenerate and bad inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(0, 0), (0, 10), (10, 0)])
def test_zero_size_raises(size):
    with pytest.raises(ValueError, match='zero'):
        load_image(Image.new('RGB', size))
    with pytest.raises(ValueError, match='zero side'):
        plan_tiles(*size)


@pytest.mark.parametrize('size,grid', [((1, 1), (1, 1)), ((1, 500), (1, 12)), ((500, 1), (12, 1)),
                                       ((1, 20000), (1, 12)), ((20000, 1), (12, 1)), ((20000, 300), (12, 1)),
                                       ((300, 20000), (1, 12))])
def test_thin_and_long_images(size, grid):
    img = _noise(*size)
    pv = load_image(img)
    p = plan_tiles(*size, use_thumbnail=True)
    assert (p.cols, p.rows) == grid
    assert pv.shape == (p.num_tiles, 3, 448, 448)
    if size[0] * size[1] <= 300 * 20000:
        assert torch.equal(pv, tiles_reference(img))


def test_corrupt_and_missing_files(tmp_path):
    png = io.BytesIO(); _noise(64, 48).save(png, 'PNG'); data = png.getvalue()
    (trunc := tmp_path / 'truncated.png').write_bytes(data[:len(data) // 2])
    (garbage := tmp_path / 'garbage.jpg').write_bytes(b'\x00' * 100)
    (empty := tmp_path / 'empty.png').write_bytes(b'')
    for bad in (trunc, garbage, empty, tmp_path / 'missing.png'):
        with pytest.raises(ImageLoadError, match=bad.name):
            load_image(bad)
    with pytest.raises(ImageLoadError):
        TileDataset([garbage])[0]


def test_bad_arguments():
    img = _noise(50, 50)
    with pytest.raises(ValueError, match='min_num <= max_num'): load_image(img, max_num=0)
    with pytest.raises(ValueError, match='min_num <= max_num'): load_image(img, min_num=5, max_num=4)
    with pytest.raises(ValueError, match='variant'): load_image(img, variant='v2')


@pytest.mark.parametrize('mode', ['L', 'P', 'RGBA', 'LA', 'CMYK'])
def test_non_rgb_modes_follow_official_convert(mode, tmp_path):
    "Official `load_image` opens with `.convert('RGB')` before tiling; files and PIL inputs both follow it."
    f = tmp_path / ('x.jpg' if mode == 'CMYK' else 'x.png')
    _noise(120, 90).convert(mode).save(f)
    opened = Image.open(f)
    want = tiles_reference(opened.convert('RGB'))
    assert torch.equal(load_image(f), want)
    assert torch.equal(load_image(opened), want)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    f = tmp_path / 'x16.png'
    Image.fromarray(np.full((90, 120), 65535, dtype=np.uint16)).save(f)
    pv = load_image(f)
    assert pv.shape == (plan_tiles(120, 90, use_thumbnail=True).num_tiles, 3, 448, 448)
    assert torch.allclose(pv[:, 0], torch.full_like(pv[:, 0], (1 - 0.485) / 0.229))  # white, not clipped to 255/65535


# ---- batched loading ---------------------------------------------------------------------------------------

def test_loader_with_workers_matches_per_image(tmp_path):
    sizes = [(800, 450), (300, 300), (360, 640), (1000, 100), (17, 15)]
    files = []
    for i, s in enumerate(sizes):
        f = tmp_path / f'{i}.png'; _noise(*s, seed=i).save(f); files.append(f)
    want = [load_image(f) for f in files]
    batches = list(tile_loader(files, batch_size=2, num_workers=2))
    assert [b['num_tiles'].tolist() for b in batches] == [[3, 1], [3, 11], [1]]
    got = torch.cat([b['pixel_values'] for b in batches])
    assert torch.equal(got, torch.cat(want))
    fork = collate_tiles([TileDataset(files[:2], variant='research_fork')[i] for i in range(2)])
    assert fork['num_tiles'].tolist() == [2, 1]


def test_explorer_upload_and_sliders():
    ex = TileExplorer()
    buf = io.BytesIO(); _noise(900, 300).save(buf, 'PNG')
    ex._on_upload({'new': [{'name': 'mine.png', 'content': memoryview(buf.getvalue())}]})
    assert ex.picker.value == 'mine.png' and (ex.plan.cols, ex.plan.rows) == (3, 1)
    ex.thumb.value = False
    assert ex.plan.num_tiles == 3 and '768 image tokens' in ex.info.value


# ---- threaded exact resize -----------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(iw=st.integers(1, 900), ih=st.integers(1, 900), ow=st.integers(1, 1400), oh=st.integers(1, 1400),
       same_w=st.booleans(), same_h=st.booleans(), lanczos=st.booleans(), threads=st.integers(2, 5), grey=st.booleans())
def test_resize_exact_is_pillow_bit_for_bit(iw, ih, ow, oh, same_w, same_h, lanczos, threads, grey):
    from vlmkit.internvl.tiling import resize_exact
    im = _noise(iw, ih, iw + ih)
    if grey: im = im.convert('L')
    size = (iw if same_w else ow, ih if same_h else oh)
    rs = LANCZOS if lanczos else BICUBIC
    want = np.asarray(im.resize(size, rs))
    assert np.array_equal(resize_exact(im, size, rs, threads), want)       # RGB: the vectorised resampler
    if size == im.size: return                                              # the path without numba leaves it to Pillow
    from vlmkit.internvl.tiling import _resize_split, _writer              # the path without numba
    _resize_split(im, size, rs, threads, _writer(out := np.empty_like(want.reshape(size[1], size[0], -1))))
    assert np.array_equal(out.reshape(want.shape), want)


@settings(max_examples=60, deadline=None)
@given(iw=st.integers(1, 700), ih=st.integers(1, 700), sizes=st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 1000)),
       min_size=1, max_size=3), lanczos=st.booleans(), threads=st.integers(1, 4))
def test_resize_many_is_pillow_bit_for_bit(iw, ih, sizes, lanczos, threads):
    "Several sizes at once (horizontal first passes shared, vertical-first ones apart), every strip reported once."
    from vlmkit.resample import resize_many, rgbx_array
    im, rs, rows = _noise(iw, ih, iw * ih), LANCZOS if lanczos else BICUBIC, {}
    outs = resize_many(rgbx_array(im), sizes, rs, threads, done=lambda i, o, a, b: rows.setdefault(i, []).append((a, b)))
    for i, (out, size) in enumerate(zip(outs, sizes)):
        assert np.array_equal(out[..., :3], np.asarray(im.resize(size, rs)))
        assert sorted(b - a for a, b in rows[i]) and sum(b - a for a, b in rows[i]) == size[1]


@pytest.mark.parametrize('size', [(4032, 3024), (1170, 2532), (6000, 1500), (2480, 3508), (600, 4000)])
def test_threaded_fast_path_equals_reference(size):
    "Strips (cut for 2, 3 or 4 threads, across tile borders) are converted straight into the tiles: same tensor."
    img = _noise(*size, seed=size[0])
    ref = tiles_fast(img, threads=1)
    for t in (2, 3, 4):
        assert torch.equal(tiles_fast(img, threads=t), ref)
    from vlmkit.internvl.tiling import _tiles_pillow                        # the path without numba
    _tiles_pillow(img, plan_tiles(*size, use_thumbnail=True), BICUBIC, 3, pillow := torch.empty_like(ref))
    assert torch.equal(pillow, ref)
    if size in [(1170, 2532), (600, 4000)]: assert torch.equal(ref, tiles_reference(img))


def test_threaded_grid_covers_both_pass_orders():
    "The sizes above resize their grid horizontally first, except the receipt: vertical first, then row strips."
    from vlmkit.resample import pillow_passes
    first_pass_horizontal = lambda w, h: pillow_passes((w, h), plan_tiles(w, h).resized_size)[0][1]
    assert first_pass_horizontal(4032, 3024) and not first_pass_horizontal(600, 4000)


def test_exif_orientation_default_and_official_switch(tmp_path):
    "vlmkit reads files upright (EXIF applied); `exif_transpose=False` reproduces the official snippet, which ignores it."
    f = tmp_path / 'rotated.jpg'
    exif = Image.Exif(); exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _noise(900, 300).save(f, exif=exif.tobytes(), quality=95)
    official = tiles_reference(Image.open(f).convert('RGB'))  # official: Image.open(...).convert('RGB'), no transpose
    assert torch.equal(load_image(f, exif_transpose=False), official)
    from PIL import ImageOps
    upright = ImageOps.exif_transpose(Image.open(f)).convert('RGB')
    assert upright.size == (300, 900)
    assert torch.equal(load_image(f), tiles_reference(upright))


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp('v') / 'clip.mp4', num_frames=30, fps=10)


def test_load_video_tiles_each_frame(clip):
    pv, counts = load_video(clip, num_segments=4)
    assert pv.shape == (4, 3, 448, 448) and counts == [1, 1, 1, 1]
    frames, idx, _ = sample_frames(clip, num_segments=4)
    want = torch.cat([tiles_fast(Image.fromarray(f), 1, 1) for f in frames])
    assert torch.equal(pv, want)
    pv, counts = load_video(clip, bound=[1.0, 2.0], num_segments=3, max_num=6)
    assert counts == [7, 7, 7] and pv.shape[0] == 21  # 64x48 -> 3x2 grid + thumbnail
