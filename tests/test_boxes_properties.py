"""Property tests for vlmkit.boxes: space round trips, xyxy/xywh, format -> parse identity per syntax, parsers that
never raise, IoU against a direct formula (always an [N, M] array), and label placement without overlaps. Each
property runs 1,000 examples."""
import math
import numpy as np
from hypothesis import given, settings, strategies as st, HealthCheck
from vlmkit.family import FAMILIES
from vlmkit.boxes import (get_syntax, convert_boxes, convert_points, xyxy_to_xywh, xywh_to_xyxy, box_problem, point_problem,
                          box_iou, parse_boxes, format_boxes, format_points, place_labels)

many = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sides = st.integers(1, 8000)
sizes = st.tuples(sides, sides)

def _xyxy(x1, y1, x2, y2): return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]

def pixel_boxes(size):
    "A valid xyxy box in pixels of an image of `size` (floats anywhere in the image)."
    x, y = st.floats(0, size[0]), st.floats(0, size[1])
    return st.builds(_xyxy, x, y, x, y)

@st.composite
def image_and_box(draw):
    size = draw(sizes)
    return size, draw(sizes), draw(pixel_boxes(size))  # (original size, resized size, box)


# --- coordinate spaces --------------------------------------------------------------------------------------

@many
@given(image_and_box())
def test_pixel_unit_resized_round_trips_are_exact(case):
    size, resized, box = case
    tol = 1e-9 * max(size)
    for space in ('unit', 'resized_pixel'):
        there = convert_boxes(box, 'pixel', space, size=size, resized_size=resized)
        back = convert_boxes(there, space, 'pixel', size=size, resized_size=resized)
        np.testing.assert_allclose(back, box, rtol=0, atol=tol)
    u = convert_boxes(box, 'pixel', 'unit', size=size)
    assert ((u >= 0) & (u <= 1)).all()

@many
@given(image_and_box())
def test_k1000_round_trip_within_half_a_thousandth(case):
    size, resized, box = case
    k = convert_boxes(box, 'pixel', 'k1000', size=size)
    assert k.dtype == np.int64 and ((k >= 0) & (k <= 1000)).all()
    back = convert_boxes(k, 'k1000', 'pixel', size=size)
    bound = 0.5 * np.array([size[0], size[1]] * 2) / 1000
    assert (np.abs(back - box) <= bound * (1 + 1e-9)).all()
    # through every space and back: only the k1000 rounding moves the box
    chain = convert_boxes(convert_boxes(convert_boxes(box, 'pixel', 'unit', size=size), 'unit', 'k1000', size=size),
                          'k1000', 'resized_pixel', size=size, resized_size=resized)
    back = convert_boxes(chain, 'resized_pixel', 'pixel', size=size, resized_size=resized)
    assert (np.abs(back - box) <= bound * (1 + 1e-9) + 1e-9 * max(size)).all()

@many
@given(sizes, st.lists(st.integers(0, 1000), min_size=2, max_size=2))
def test_k1000_integers_survive_pixel_round_trip(size, k):
    px = convert_points(k, 'k1000', 'pixel', size=size)
    assert convert_points(px, 'pixel', 'k1000', size=size).tolist() == k

@many
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=4, max_size=4))
def test_xyxy_xywh_round_trip(b):
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(b)), b, rtol=1e-12, atol=1e-6)
    np.testing.assert_allclose(xyxy_to_xywh(xywh_to_xyxy(b)), b, rtol=1e-12, atol=1e-6)
    wh = xyxy_to_xywh(b)[2:]
    np.testing.assert_allclose(wh, [b[2] - b[0], b[3] - b[1]])


# --- format -> parse identity per syntax --------------------------------------------------------------------

TAGS = ('<ref>', '</ref>', '<box>', '</box>', '<point>', '</point>')
labels = st.one_of(st.none(), st.text(max_size=20).filter(lambda s: not any(t in s for t in TAGS)))

def _box_on_grid(hi, scale):
    "xyxy with 0 <= x1 < x2 <= hi on an integer grid, divided by `scale`."
    def build(x1, w, y1, h): return [x1 / scale, y1 / scale, min(hi, x1 + w) / scale, min(hi, y1 + h) / scale]
    return st.builds(build, st.integers(0, hi - 1), st.integers(1, hi), st.integers(0, hi - 1), st.integers(1, hi))

def syntax_boxes(syntax):
    "1..5 valid boxes as the syntax writes them (Ovis: thousandths in [0, 1]; integer syntaxes: ints), with labels."
    sx = get_syntax(syntax)
    hi = 1000 if sx.space in ('unit', 'k1000') else 4000   # resized_pixel: any size the parser is not told about
    scale = 1000 if sx.space == 'unit' else 1
    pairs = st.lists(st.tuples(_box_on_grid(hi, scale), labels), min_size=1, max_size=5)
    return pairs.map(lambda ps: ([b for b, _ in ps], [l for _, l in ps]))

def _check_round_trip(syntax, boxes, labs):
    text = format_boxes(boxes, syntax, labels=labs)
    r = parse_boxes(text, syntax)
    assert r.rejected == [], (text, r.rejected)
    assert r.boxes.tolist() == boxes, text
    assert r.box_labels == labs, text
    assert all(f.space == get_syntax(syntax).space for f in r.found)

@many
@given(syntax_boxes('ovis2_5'))
def test_ovis_format_parse_identity(case): _check_round_trip('ovis2_5', *case)

@many
@given(syntax_boxes('internvl3_5'))
def test_internvl_format_parse_identity(case): _check_round_trip('internvl3_5', *case)

@many
@given(syntax_boxes('qwen2_5_vl'))
def test_qwen_format_parse_identity(case): _check_round_trip('qwen2_5_vl', *case)

@many
@given(st.sampled_from(['ovis2_5', 'qwen2_5_vl']), st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=4), st.data())
def test_points_format_parse_identity(syntax, pts, data):
    scale = 1000 if syntax == 'ovis2_5' else 1
    pts = [[x / scale, y / scale] for x, y in pts]
    labs = data.draw(st.lists(labels, min_size=len(pts), max_size=len(pts)))
    r = parse_boxes(format_points(pts, syntax, labels=labs), syntax)
    assert r.rejected == [] and r.points.tolist() == pts and r.point_labels == labs and len(r.boxes) == 0


# --- parsers never raise, and what they accept is valid -----------------------------------------------------

def _check_parse_invariants(text, syntax):
    r = parse_boxes(text, syntax)
    sx = get_syntax(syntax)
    for f in r.found:
        assert f.space == sx.space
        problem = box_problem(f.coords, sx.space) if f.kind == 'box' else point_problem(f.coords, sx.space)
        assert problem is None, (text, f)
        assert 0 <= f.span[0] < f.span[1] <= len(text)
    for x in r.rejected:
        assert isinstance(x.reason, str) and x.reason and 0 <= x.span[0] <= x.span[1] <= len(text)
    assert r.boxes.shape == (len([f for f in r.found if f.kind == 'box']), 4)

@many
@given(st.text(max_size=300), st.sampled_from(list(FAMILIES)))
def test_parsers_never_raise_on_arbitrary_text(text, syntax):
    _check_parse_invariants(text, syntax)

PIECES = ['<ref>', '</ref>', '<box>', '</box>', '<point>', '</point>', '(', ')', '[', ']', '[[', ']]', '{', '}', ',', ', ',
          ':', '"', '"bbox_2d"', '"point_2d"', '"label"', '```json\n', '```', '\n', ' ', '0', '1', '7', '12', '999', '1000',
          '0.5', '.25', '1e3', '-', '+', 'e', 'nan', 'NaN', 'inf', 'Infinity', 'null', 'true', 'x', 'cat', '\\', '\t']
syntax_soup = st.lists(st.sampled_from(PIECES), max_size=60).map(''.join)

@many
@given(syntax_soup, st.sampled_from(list(FAMILIES)))
def test_parsers_never_raise_on_syntax_soup(text, syntax):
    _check_parse_invariants(text, syntax)

@many
@given(st.sampled_from(list(FAMILIES)), st.data())
def test_parsers_never_raise_on_mangled_answers(syntax, data):
    "A well-formed answer with characters deleted, duplicated or replaced (as a cut or noisy generation would)."
    boxes, labs = data.draw(syntax_boxes(syntax))
    text = list(format_boxes(boxes, syntax, labels=labs))
    edits = data.draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(['del', 'dup', 'sub']), st.sampled_from(PIECES)),
                               min_size=1, max_size=4))
    for pos, op, piece in edits:
        if not text: break
        i = pos % len(text)
        if op == 'del': del text[i]
        elif op == 'dup': text.insert(i, text[i])
        else: text[i] = piece
    _check_parse_invariants(''.join(text), syntax)


# --- IoU ------------------------------------------------------------------------------------------------------

def direct_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0

box_lists = st.lists(pixel_boxes((640, 480)), min_size=1, max_size=4)

@many
@given(box_lists, box_lists)
def test_iou_symmetric_bounded_and_equal_to_direct_formula(p, g):
    m = box_iou(p, g)
    assert m.shape == (len(p), len(g))
    assert ((m >= 0) & (m <= 1 + 1e-12)).all()
    np.testing.assert_allclose(box_iou(g, p), m.T, rtol=0, atol=1e-12)
    direct = np.array([[direct_iou(a, b) for b in g] for a in p])
    np.testing.assert_allclose(m, direct, rtol=1e-9, atol=1e-9)

@many
@given(pixel_boxes((5000, 5000)))
def test_iou_of_a_box_with_itself_is_one(b):
    iou = box_iou(b, b)
    assert type(iou) is np.ndarray and iou.shape == (1, 1)
    if (b[2] - b[0]) * (b[3] - b[1]) > 0: assert math.isclose(iou[0, 0], 1.0, rel_tol=1e-12)
    else: assert iou[0, 0] == 0.0   # pycocotools: zero area, zero intersection

@many
@given(box_lists, box_lists, st.booleans(), st.booleans())
def test_iou_is_an_n_by_m_array_for_every_input_shape(p, g, p_single, g_single):
    "A single box [4] counts as one box: the result is [N, M] float64 whether the inputs are 1-D or 2-D."
    p, g = (p[0] if p_single else p), (g[0] if g_single else g)
    m = box_iou(p, g)
    assert type(m) is np.ndarray and m.dtype == np.float64
    assert m.shape == (1 if p_single else len(p), 1 if g_single else len(g))
    np.testing.assert_array_equal(m, box_iou(np.atleast_2d(p), np.atleast_2d(g)))


# --- label placement ----------------------------------------------------------------------------------------

def _overlaps(a, b): return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]

label_rects = st.lists(st.builds(lambda x, y, w, h: (x, y, x + w, y + h), st.integers(0, 300), st.integers(0, 300),
                                 st.integers(0, 120), st.integers(0, 40)), max_size=12)

@many
@given(label_rects, st.integers(0, 4))
def test_placed_labels_never_overlap_and_only_move_down(rects, gap):
    placed = place_labels(rects, gap)
    assert len(placed) == len(rects)
    for (l, t, r, b), (pl, pt, pr, pb) in zip(rects, placed):
        assert (pl, pr) == (l, r) and pb - pt == b - t and pt >= t   # same size and x, moved down or kept
    for i in range(len(placed)):
        for j in range(i):
            assert not _overlaps(placed[i], placed[j]), (rects, placed)
    if rects: assert placed[0] == rects[0]   # the first label stays where it was asked for
