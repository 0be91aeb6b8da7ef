"""Every kind of bad or unusual image file gives the result documented in nbs/01_images.ipynb.

The files are generated in pytest's tmp_path; each test names the kind it covers."""
import gc, io, os, struct, warnings, zlib
from contextlib import contextmanager
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from vlmkit.images import ImageLoadError, load_image, to_rgb, synthetic_image, DEFAULT_MAX_PIXELS


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)

def _png_header_only(w: int, h: int) -> bytes:
    "A PNG whose IHDR claims w x h (8-bit RGB) and whose one IDAT holds a single compressed row."
    ihdr = struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', ihdr)
            + _png_chunk(b'IDAT', zlib.compress(b'\x00' * 64)) + _png_chunk(b'IEND', b''))

def _save(img, path, fmt=None, **kw):
    img.save(path, fmt, **kw)
    return path

def _opened(path):
    "The file as Pillow opens it (decoded, file closed), to compare with."
    with Image.open(path) as im:
        im.load()
        return im.copy()

def _photo(w=64, h=48):
    return synthetic_image(3, size=(w, h), n_objects=1)[0]


# --- files that are not usable images: ImageLoadError naming the file -----------------------------------

def test_missing_file(tmp_path):
    p = tmp_path/'nope.jpg'
    with pytest.raises(ImageLoadError, match='file not found') as e: load_image(p)
    assert str(p) in str(e.value) and e.value.name == str(p)

def test_directory(tmp_path):
    with pytest.raises(ImageLoadError, match='is a directory') as e: load_image(tmp_path)
    assert str(tmp_path) in str(e.value)

def test_empty_file(tmp_path):
    p = tmp_path/'empty.png'; p.write_bytes(b'')
    with pytest.raises(ImageLoadError, match=r'empty file \(0 bytes\)') as e: load_image(str(p))
    assert str(p) in str(e.value)

def test_empty_bytes():
    with pytest.raises(ImageLoadError, match=r'<0 bytes>: empty'): load_image(b'')

def test_text_file_named_jpg(tmp_path):
    p = tmp_path/'notes.jpg'; p.write_text('this is not a JPEG\n')
    with pytest.raises(ImageLoadError, match="not an image Pillow can read") as e: load_image(p)
    assert str(p) in str(e.value) and "b'this is not a JP" in str(e.value)

def test_html_error_page_as_bytes():
    with pytest.raises(ImageLoadError, match=r"<\d+ bytes>: not an image"): load_image(b'<html><body>403 Forbidden</body></html>')

@pytest.mark.parametrize('cut', [0.3, 0.6, 0.9])
def test_truncated_png(tmp_path, cut):
    data = (tmp_path/'full.png'); _save(_photo(), data)
    b = data.read_bytes(); p = tmp_path/'cut.png'; p.write_bytes(b[:int(len(b) * cut)])
    with pytest.raises(ImageLoadError) as e: load_image(p)
    assert str(p) in str(e.value) and ('truncated' in str(e.value) or 'cannot' in str(e.value))

@pytest.mark.parametrize('cut', [0.3, 0.6, 0.9])
def test_truncated_jpeg(tmp_path, cut):
    data = _save(_photo(), tmp_path/'full.jpg', quality=90)
    b = data.read_bytes(); p = tmp_path/'cut.jpg'; p.write_bytes(b[:int(len(b) * cut)])
    with pytest.raises(ImageLoadError, match='truncated or corrupt') as e: load_image(p)
    assert str(p) in str(e.value)

def test_corrupt_png_data(tmp_path):
    "A valid header with garbage where the compressed pixels should be."
    ihdr = struct.pack('>IIBBBBB', 8, 8, 8, 2, 0, 0, 0)
    p = tmp_path/'garbage.png'
    p.write_bytes(b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', ihdr) + _png_chunk(b'IDAT', b'not zlib data at all')
                  + _png_chunk(b'IEND', b''))
    with pytest.raises(ImageLoadError, match='truncated or corrupt') as e: load_image(p)
    assert str(p) in str(e.value)

def test_zero_size_png(tmp_path):
    p = tmp_path/'zero.png'; p.write_bytes(_png_header_only(0, 10))
    with pytest.raises(ImageLoadError) as e: load_image(p)
    assert str(p) in str(e.value)

def test_unsupported_source_type():
    with pytest.raises(TypeError, match='expected a path, bytes'): load_image(12345)


# --- decompression bombs --------------------------------------------------------------------------------

def test_bomb_header_beyond_pillow_hard_limit(tmp_path):
    "100000 x 100000 claimed by a 100-byte file: refused before any decoding, naming the file and the size."
    p = tmp_path/'bomb.png'; p.write_bytes(_png_header_only(100_000, 100_000))
    assert p.stat().st_size < 200
    with pytest.raises(ImageLoadError, match='decompression-bomb') as e: load_image(p)
    assert str(p) in str(e.value) and '10000000000 pixels' in str(e.value)

def test_bomb_header_between_limits_no_pillow_warning(tmp_path, recwarn):
    "A size above max_pixels but below Pillow's hard limit: our error names width x height; no Pillow warning leaks."
    p = tmp_path/'big.png'; p.write_bytes(_png_header_only(12_000, 8_000))
    with pytest.raises(ImageLoadError) as e: load_image(p)
    assert f'12000x8000 = 96,000,000 pixels exceeds max_pixels={DEFAULT_MAX_PIXELS:,}' in str(e.value)
    assert str(p) in str(e.value)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]

def test_bomb_by_lowering_the_limit(tmp_path):
    p = _save(_photo(64, 48), tmp_path/'ok.png')
    with pytest.raises(ImageLoadError, match=r'64x48 = 3,072 pixels exceeds max_pixels=3,000') as e: load_image(p, max_pixels=3000)
    assert str(p) in str(e.value)
    assert load_image(p, max_pixels=3072).size == (64, 48)
    assert load_image(p, max_pixels=None).size == (64, 48)

def test_bomb_limit_applies_to_pil_input():
    with pytest.raises(ImageLoadError, match=r'<PIL.Image RGB 64x48>: 64x48'): load_image(_photo(), max_pixels=100)


# --- unusual but valid files: the documented conversion -------------------------------------------------

def test_exif_rotated_jpeg(tmp_path):
    "Orientation 6 (rotate 90 degrees clockwise to view): the red block stored top-left is shown top-right."
    stored = Image.new('RGB', (60, 40), (0, 0, 255)); stored.paste((255, 0, 0), (0, 0, 20, 20))
    ex = Image.Exif(); ex[0x0112] = 6
    p = _save(stored, tmp_path/'phone.jpg', quality=95, exif=ex)
    up = load_image(p)
    assert up.size == (40, 60)
    r, g, b = up.getpixel((30, 10)); assert r > 200 and b < 60      # top-right is red
    r, g, b = up.getpixel((10, 10)); assert b > 200 and r < 60      # top-left is blue
    raw = load_image(p, exif_transpose=False)
    assert raw.size == (60, 40) and raw.getpixel((10, 10))[0] > 200

@pytest.mark.parametrize('orientation,size', [(1, (60, 40)), (2, (60, 40)), (3, (60, 40)), (5, (40, 60)), (8, (40, 60))])
def test_exif_orientations(tmp_path, orientation, size):
    ex = Image.Exif(); ex[0x0112] = orientation
    p = _save(Image.new('RGB', (60, 40), 'green'), tmp_path/f'o{orientation}.jpg', exif=ex)
    assert load_image(p).size == size

def test_cmyk_jpeg(tmp_path):
    "CMYK: Pillow's subtractive rule R = 255 - min(255, C + K), the same as img.convert('RGB')."
    p = _save(Image.new('CMYK', (16, 16), (0, 255, 0, 50)), tmp_path/'print.jpg', quality=100)
    assert _opened(p).mode == 'CMYK'
    im = load_image(p)
    assert im.mode == 'RGB'
    assert np.abs(np.asarray(im).astype(int) - np.array([205, 0, 205])).max() <= 3
    assert np.array_equal(np.asarray(im), np.asarray(_opened(p).convert('RGB')))

def test_sixteen_bit_png(tmp_path):
    "I;16 is scaled linearly (round(v * 255 / 65535)), not clipped at 255 as Pillow's convert would."
    a = np.array([[0, 255, 256, 1000, 32767, 32768, 60000, 65535]], dtype=np.uint16)
    p = _save(Image.fromarray(a), tmp_path/'depth.png')
    assert _opened(p).mode == 'I;16'
    im = load_image(p)
    assert im.mode == 'RGB'
    got = np.asarray(im)
    assert np.array_equal(got[..., 0], got[..., 2])
    assert got[0, :, 0].tolist() == [round(v * 255 / 65535) for v in a[0].tolist()] == [0, 1, 1, 4, 127, 128, 233, 255]

def test_sixteen_bit_big_endian_and_mode_I():
    a = np.array([[0, 257, 65535]], dtype='>u2')
    big = Image.frombytes('I;16B', (3, 1), a.tobytes())
    assert [to_rgb(big).getpixel((i, 0))[0] for i in range(3)] == [0, 1, 255]
    i32 = Image.fromarray(np.array([[-5, 257, 70000]], dtype=np.int32), 'I')
    assert [to_rgb(i32).getpixel((i, 0))[0] for i in range(3)] == [0, 1, 255]

def _palette_with_transparency():
    im = Image.new('P', (4, 2)); im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 1); im.info['transparency'] = 0   # index 0 (red) is transparent
    return im

def test_palette_with_transparency(tmp_path):
    p = _save(_palette_with_transparency(), tmp_path/'pal.png')
    src = _opened(p); assert src.mode == 'P' and 'transparency' in src.info
    dropped = load_image(p)
    assert dropped.getpixel((1, 0)) == (255, 0, 0) and dropped.getpixel((0, 0)) == (0, 255, 0)
    assert np.array_equal(np.asarray(dropped), np.asarray(_opened(p).convert('RGB')))
    white = load_image(p, alpha='white')
    assert white.getpixel((1, 0)) == (255, 255, 255) and white.getpixel((0, 0)) == (0, 255, 0)

def test_la(tmp_path):
    a = np.stack([np.full((3, 3), 100, np.uint8), np.array([[0, 128, 255]] * 3, np.uint8)], -1)
    p = _save(Image.fromarray(a, 'LA'), tmp_path/'la.png')
    assert _opened(p).mode == 'LA'
    assert load_image(p).getpixel((0, 0)) == (100, 100, 100)                   # grey replicated, alpha dropped
    assert [load_image(p, alpha='white').getpixel((i, 0)) for i in range(3)] == [(255,) * 3, (177,) * 3, (100,) * 3]
    assert load_image(p, alpha=(0, 0, 0)).getpixel((1, 0)) == (50, 50, 50)

def test_rgba(tmp_path):
    a = np.zeros((2, 2, 4), np.uint8); a[..., 0] = 200; a[0, 0, 3] = 0; a[0, 1, 3] = 255; a[1, :, 3] = 64
    p = _save(Image.fromarray(a, 'RGBA'), tmp_path/'rgba.png')
    dropped = load_image(p)
    assert dropped.getpixel((0, 0)) == (200, 0, 0)                              # official: alpha dropped, no compositing
    assert np.array_equal(np.asarray(dropped), np.asarray(_opened(p).convert('RGB')))
    white = load_image(p, alpha='white')
    assert white.getpixel((0, 0)) == (255, 255, 255) and white.getpixel((1, 0)) == (200, 0, 0)
    assert white.getpixel((0, 1)) == (241, 191, 191)

def test_greyscale_and_bilevel(tmp_path):
    p = _save(Image.new('L', (3, 3), 77), tmp_path/'g.png')
    assert load_image(p).getpixel((1, 1)) == (77, 77, 77)
    p = _save(Image.new('1', (3, 3), 1), tmp_path/'b.png')
    assert load_image(p).getpixel((1, 1)) == (255, 255, 255)

def test_bad_alpha_argument_raised_before_io(tmp_path):
    with pytest.raises(ValueError, match="alpha='transparent-ish'"): load_image(tmp_path/'missing.png', alpha='transparent-ish')


# --- sources other than paths ---------------------------------------------------------------------------

def test_sources_agree(tmp_path):
    img = _photo()
    p = _save(img, tmp_path/'x.png')
    ref = np.asarray(img)
    for src in [p, str(p), p.read_bytes(), bytearray(p.read_bytes()), io.BytesIO(p.read_bytes()), _opened(p), img]:
        out = load_image(src)
        assert out.mode == 'RGB' and np.array_equal(np.asarray(out), ref), type(src)

def test_result_is_a_fresh_image(tmp_path):
    img = _photo()
    out = load_image(img)
    out.putpixel((0, 0), (1, 2, 3))
    assert img.getpixel((0, 0)) != (1, 2, 3)

def _fds_on(path) -> list[str]:
    "This process's open file descriptors that point at `path` (Linux's /proc/self/fd; skips where there is none)."
    fds = Path('/proc/self/fd')
    if not fds.is_dir(): pytest.skip('needs /proc/self/fd (Linux) to list open file descriptors')
    target, found = os.path.realpath(path), []
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == target: found.append(fd.name)
        except OSError: pass   # the descriptor that listed the folder is gone by now
    return found

@contextmanager
def _unclosed_files():
    "The ResourceWarnings ('unclosed file') of files that were garbage-collected open inside the block."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        found = []
        yield found
        gc.collect()
    found += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]

def _two_frame_gif(path):
    "Pillow keeps a multi-frame file open after load() (to seek to other frames) until the image is closed."
    a, b = _photo(), synthetic_image(4, size=(64, 48), n_objects=1)[0]
    a.save(path, save_all=True, append_images=[b])
    return path

def test_open_handles_are_seen(tmp_path):
    "The checks of test_file_is_closed can fail: a handle left open shows up, and so does one closed only by the GC."
    p, gif = _save(_photo(), tmp_path/'x.png'), _two_frame_gif(tmp_path/'two.gif')
    assert _fds_on(p) == []
    with open(p, 'rb'): assert len(_fds_on(p)) == 1
    with _unclosed_files() as unclosed:
        leaked = Image.open(gif); leaked.load()
        assert len(_fds_on(gif)) == 1
        del leaked
    assert _fds_on(gif) == [] and len(unclosed) == 1 and 'two.gif' in unclosed[0]

def test_file_is_closed(tmp_path):
    "load_image closes the file itself, whether it returns or raises: no descriptor stays open, none is left to the GC."
    ok = [_save(_photo(), tmp_path/'x.png'), _two_frame_gif(tmp_path/'two.gif')]
    cut = tmp_path/'cut.png'; cut.write_bytes(ok[0].read_bytes()[:ok[0].stat().st_size // 2])
    text = tmp_path/'notes.jpg'; text.write_text('not a JPEG')
    bad = [(cut, {}), (ok[0], dict(max_pixels=100)), (text, {})]
    with _unclosed_files() as unclosed:
        images = [load_image(p) for p in ok]
        errors = []
        for p, kw in bad:
            with pytest.raises(ImageLoadError) as e: load_image(p, **kw)
            errors.append(e.value)   # its traceback keeps load_image's frame, and a file it left open, alive
        for p in ok + [cut, text]: assert _fds_on(p) == [], p
        del images, errors
    assert unclosed == []

def test_lazy_pil_image_of_a_truncated_file_names_the_file(tmp_path):
    "A PIL image the caller opened lazily is decoded by load_image; its truncation error names the file."
    data = _save(_photo(), tmp_path/'full.jpg', quality=90)
    p = tmp_path/'cut.jpg'; p.write_bytes(data.read_bytes()[:int(data.stat().st_size * 0.6)])
    with Image.open(p) as lazy:
        with pytest.raises(ImageLoadError, match='truncated or corrupt') as e: load_image(lazy)
    assert e.value.name == str(p)
