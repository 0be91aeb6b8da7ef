"""vlmkit.video: official get_index rows, sampler properties, decoding backends, bad files, save_frames CLI."""
import json
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from vlmkit.testing import require_fixture
from vlmkit.video import (NumSegmentsError, VideoLoadError, available_backends, get_index, get_index_hf,
    make_test_video, read_frames, sample_frames, save_frames, save_frames_cli, clip_frame_number,
    video_info)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp('v') / 'clip.mp4', num_frames=30, fps=10)


def test_every_official_row():
    d = json.loads(require_fixture('internvl/internvl_video_index.json').read_text())
    assert len(d['entries']) >= 30
    for e in d['entries']:
        args = (e['bound'], e['fps'], e['max_frame'], e['first_idx'], e['num_segments'])
        if 'error' in e:
            assert e['error'].startswith('ZeroDivisionError')
            with pytest.raises(ZeroDivisionError, match='num_segments=0'): get_index(*args)
            with pytest.raises(ValueError): get_index(*args)
        else:
            got = get_index(*args)
            assert got.dtype == np.dtype(e['dtype']) and got.tolist() == e['frame_indices'], e


def test_negative_segments_raise_instead_of_returning_nothing():
    with pytest.raises(NumSegmentsError, match='returns no frames'): get_index(None, 30, 299, 0, -3)


def test_bankers_rounding_is_kept():
    # round(0.5 * 25) = round(12.5) = 12 (half to even), not 13
    assert get_index([0.5, 0.5], 25.0, 1000, 0, 1).tolist() == [12]
    assert get_index([0.1, 0.1], 25.0, 1000, 0, 1).tolist() == [2]   # round(2.5) = 2
    assert get_index([0.14, 0.14], 25.0, 1000, 0, 1).tolist() == [4]  # round(3.5000000000000004) = 4


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5000), fps=st.floats(1, 120), segs=st.integers(1, 64), first=st.integers(0, 10))
def test_whole_clip_indices_stay_in_range_and_ordered(n, fps, segs, first):
    idx = get_index(None, fps, n - 1, min(first, n - 1), segs)
    assert len(idx) == segs and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() <= n - 1
    assert (np.diff(idx) >= 0).all()


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 5000), k=st.integers(1, 64))
def test_hf_sampler_properties(total, k):
    if k > total:
        with pytest.raises(ValueError, match='exceeds'): get_index_hf(total, k)
        return
    idx = get_index_hf(total, k)
    assert len(idx) == k and idx.min() >= 0 and idx.max() < total and (np.diff(idx) > 0).all()
    official = get_index(None, 1.0, total - 1, 0, k)  # fps is irrelevant without a bound
    assert np.abs(official - idx).max() <= 2  # same segments, measured over total-1 frames instead of total


@pytest.mark.parametrize('codec,ext', [('mpeg4', 'mp4'), ('libx264', 'mp4'), ('ffv1', 'mkv'),])
def test_decoding_finds_the_right_frames(tmp_path, codec, ext):
    p = make_test_video(tmp_path / f'c.{ext}', num_frames=12, fps=6, codec=codec)
    info = video_info(p)
    assert (info.num_frames, info.width, info.height) == (12, 64, 48) and abs(info.fps - 6) < 1e-6
    idx = [7, 0, 7, 11, 3]
    frames = read_frames(p, idx)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert [clip_frame_number(f) for f in frames] == idx


@pytest.mark.parametrize('backend', ['decord', 'opencv'])
def test_optional_backends_agree_with_pyav(clip, backend):
    if backend not in available_backends(): pytest.skip(f'{backend} is not installed here')
    info = video_info(clip, backend)
    assert info.num_frames == 30 and abs(info.fps - 10) < 1e-3
    frames = read_frames(clip, [0, 9, 29], backend)
    assert [clip_frame_number(f) for f in frames] == [0, 9, 29]


def test_backend_errors(clip):
    with pytest.raises(ValueError, match='unknown video backend'): video_info(clip, 'ffmpeg-cli')
    missing = [b for b in ('decord', 'opencv') if b not in available_backends()]
    for b in missing:
        with pytest.raises(ImportError, match='pip install'): video_info(clip, b)


def test_fewer_frames_than_asked(clip):
    with pytest.raises(ValueError, match='asked for 31 frames but the video has only 30'):
        sample_frames(clip, num_segments=31)
    frames, idx, _ = sample_frames(clip, num_segments=31, allow_repeats=True)
    assert len(frames) == 31 and len(set(idx.tolist())) < 31
    with pytest.raises(VideoLoadError, match='frame 30 was asked for'):
        read_frames(clip, [30])


def test_unreadable_files(tmp_path, clip):
    data = clip.read_bytes()
    cases = {'garbage.mp4': b'\x00\x01\x02' * 300, 'text.mp4': b'hello, not a video\n' * 20,
             'half.mp4': data[:len(data) // 2]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / 'empty.mp4').write_bytes(b'')
    (tmp_path / 'adir.mp4').mkdir()
    for name in [*cases, 'empty.mp4', 'adir.mp4', 'missing.mp4']:
        with pytest.raises(VideoLoadError, match=name):
            frames, *_ = sample_frames(tmp_path / name, num_segments=4)


def test_truncated_stream_with_index_up_front(tmp_path):
    "A faststart file cut short opens (the index says 40 frames) but decodes fewer: a clear error, not a short batch."
    import av
    src = make_test_video(tmp_path / 'full.mp4', num_frames=40, fps=10)
    fast = tmp_path / 'fast.mp4'
    with av.open(str(src)) as i, av.open(str(fast), 'w', options={'movflags': 'faststart'}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for pkt in i.demux(i.streams.video[0]):
            if pkt.dts is not None: pkt.stream = s; o.mux(pkt)
    data = fast.read_bytes()
    (cut := tmp_path / 'cut.mp4').write_bytes(data[:int(len(data) * 0.6)])
    info = video_info(cut)
    assert info.num_frames == 40
    with pytest.raises(VideoLoadError, match='cut.mp4'):
        read_frames(cut, [39])


def test_audio_only_file(tmp_path):
    import av
    p = tmp_path / 'tone.wav'
    with av.open(str(p), 'w') as c:
        s = c.add_stream('pcm_s16le', rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format='s16', layout='mono'); f.sample_rate = 8000
        for pkt in s.encode(f): c.mux(pkt)
        for pkt in s.encode(): c.mux(pkt)
    with pytest.raises(VideoLoadError, match='no video stream'): video_info(p)


def test_save_frames_names_and_sizes(clip, tmp_path):
    paths = save_frames(clip, tmp_path / 'f', num_segments=5)
    assert [p.name for p in paths] == [f'frame_{k:03d}.png' for k in range(5)]
    assert all(Image.open(p).size == (448, 448) for p in paths)
    raw = save_frames(clip, tmp_path / 'r', num_segments=3, size=None, fmt='jpg', prefix='f')
    assert [p.name for p in raw] == ['f000.jpg', 'f001.jpg', 'f002.jpg'] and Image.open(raw[0]).size == (64, 48)
    want = get_index(None, 10.0, 29, 0, 3).tolist()
    assert [clip_frame_number(np.asarray(Image.open(p))) for p in raw] == want


def test_cli(clip, tmp_path):
    # what the console script does, sys.exit(<the function's return value>), in a process forked from this one (tests/forked.py)
    from forked import run_forked
    run = lambda *a: run_forked(save_frames_cli, a, prog='vlmkit-save-frames')
    r = run(clip, tmp_path / 'out', '-n', '3', '--bound', '0.5', '2.5', '--size', '0')
    assert r.returncode == 0 and r.stderr == '', r.stderr
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['frame_000.png', 'frame_001.png', 'frame_002.png']
    r = run(tmp_path / 'nope.mp4', tmp_path / 'out2')
    assert r.returncode == 2 and 'nope.mp4: file not found' in r.stderr
    r = run(clip, tmp_path / 'out3', '-n', '99')
    assert r.returncode == 2 and 'only 30' in r.stderr
    assert save_frames_cli([str(clip), str(tmp_path / 'out4'), '-n', '2']) == 0   # an exit status, not the paths
    assert len(list((tmp_path / 'out4').iterdir())) == 2
