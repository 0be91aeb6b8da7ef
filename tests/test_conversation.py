"""Property tests for vlmkit.conversation: JSON and message-dict round trips, where every image and call sits,
growing a conversation equals building it at once, LLaVA placeholders, and readers that fail only with a
ConversationError on any input (what a data reader reports as a bad record)."""
import json, math
from dataclasses import replace
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from vlmkit.conversation import (ConversationError, Conversation, Turn, Text, ImageRef, VideoRef, ToolCall, ToolResult,
                                 IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)

some = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
many = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------------------------

texts = st.text(max_size=30).filter(lambda s: IMAGE_PLACEHOLDER not in s and VIDEO_PLACEHOLDER not in s)
names = st.text(min_size=1, max_size=12)
paths = st.from_regex(r'[a-z0-9_/]{1,20}\.(jpg|png)', fullmatch=True)
json_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)
json_dicts = st.dictionaries(st.text(max_size=6), json_values, max_size=3)

@st.composite
def boxes_in(draw, w, h, n):
    out = []
    for _ in range(n):
        x1, x2 = sorted(draw(st.lists(st.floats(0, w), min_size=2, max_size=2, unique=True)))
        y1, y2 = sorted(draw(st.lists(st.floats(0, h), min_size=2, max_size=2, unique=True)))
        out.append((x1, y1, x2, y2))
    return out

@st.composite
def image_refs(draw, crop=False):
    w, h = draw(st.integers(1, 4000)), draw(st.integers(1, 4000))
    size = draw(st.sampled_from([(w, h), None]))
    boxes = draw(boxes_in(w, h, draw(st.integers(0, 3))))
    labels = draw(st.sampled_from([(), tuple(draw(st.one_of(st.none(), names)) for _ in boxes)]))
    region = draw(boxes_in(w, h, 1))[0] if crop or draw(st.booleans()) else None
    return ImageRef(draw(paths), size=size, region=region, boxes=boxes, labels=labels)

videos = st.builds(VideoRef, st.one_of(paths.map(lambda p: p[:-3] + 'mp4'), st.lists(paths, min_size=1, max_size=4)),
                   st.one_of(st.none(), st.floats(0.5, 60)))
tool_calls = st.builds(ToolCall, names, json_dicts, st.one_of(st.none(), texts), st.none())

def result_for(call):
    return st.builds(lambda c, n, e: ToolResult(c, name=n, error=e),
                     st.lists(st.one_of(texts.map(Text), image_refs(crop=True)), min_size=1, max_size=2),
                     st.sampled_from([None, call.name]), st.booleans())

user_turns = st.lists(st.one_of(texts.map(Text), image_refs(), videos), min_size=1, max_size=4).map(lambda c: Turn('user', c))

@st.composite
def assistant_turns(draw, last:bool):
    "Text and calls, each call answered right after it; in the last turn the last call may stay unanswered."
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()): parts.append(Text(draw(texts)))
        else:
            call = draw(tool_calls); parts.append(call)
            parts.append(draw(result_for(call)))
    if last and draw(st.booleans()): parts.append(draw(tool_calls))
    return Turn('assistant', parts)

@st.composite
def conversations(draw):
    n = draw(st.integers(1, 3))
    turns = []
    for i in range(n):
        turns.append(draw(user_turns))
        if draw(st.booleans()) or i < n - 1: turns.append(draw(assistant_turns(last=i == n - 1)))
    return Conversation(turns, system=draw(st.one_of(st.none(), st.text(max_size=20))), meta=draw(json_dicts))

def flat_images(c):
    return [q for t in c.turns for p in t.content for q in (p.content if isinstance(p, ToolResult) else (p,)) if isinstance(q, ImageRef)]

# --- round trips, placement, growing (one generated conversation checks several properties: generation is the cost)

@some
@given(conversations())
def test_json_and_message_dict_round_trips_are_exact(c):
    assert Conversation.from_json(c.to_json()) == c
    assert Conversation.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert Conversation.from_messages(c.to_messages(), meta=c.meta) == c
    flat = Conversation.from_messages(c.to_messages(text_as_str=True), meta=c.meta)   # text-only turns become one string
    shape = lambda t: (t.role, t.text, len(t.content) if any(not isinstance(p, Text) for p in t.content) else 1)
    assert [shape(t) for t in flat.turns] == [shape(t) for t in c.turns]

@some
@given(conversations())
def test_every_placed_item_is_where_it_says(c):
    assert [p.item for p in c.images] == flat_images(c)
    for p in (*c.images, *c.videos, *c.tool_calls, *c.tool_results):
        part = c.turns[p.turn].content[p.part]
        assert c.turns[p.turn].role == p.role
        assert (part.content[p.sub] if p.from_tool else part) is p.item
    for call, res in c.tool_pairs:
        assert isinstance(call.item, ToolCall)
        if res is not None: assert (res.turn, res.part) > (call.turn, call.part) and res.item.name in (None, call.item.name)
    assert len(c.pending_calls) <= 1 and len(c.tool_pairs) == len(c.tool_calls)
    # growing part by part (as a rollout does) equals building at once
    grown = Conversation([Turn(c.turns[0].role, c.turns[0].content[:1])], system=c.system, meta=c.meta)
    grown = grown.with_parts(*c.turns[0].content[1:]) if len(c.turns[0].content) > 1 else grown
    for t in c.turns[1:]:
        grown = grown.with_turn(t.role, t.content[:1])
        for p in t.content[1:]: grown = grown.with_parts(p)
    assert grown == c
    # map_images touches images only
    moved = c.map_images(lambda r: replace(r, src='/root/' + r.src))
    assert [p.item.src for p in moved.images] == ['/root/' + p.item.src for p in c.images]
    assert moved.map_images(lambda r: replace(r, src=r.src[len('/root/'):])) == c
    # a tool result before any call is refused (turn 0 is a user turn: no call yet)
    with pytest.raises(ConversationError, match=r'turn 1 \(tool\), part 0 \(tool_result\): a tool result with no tool call before it'):
        Conversation([c.turns[0], Turn('tool', 'orphan'), *c.turns[1:]])

# --- LLaVA placeholders -------------------------------------------------------------------------------------

@some
@given(st.lists(st.tuples(st.lists(texts, min_size=1, max_size=4), texts), min_size=1, max_size=3), st.integers(-2, 2))
def test_llava_placeholders_take_images_in_order(rows, off):
    turns, n = [], 0
    for pieces, answer in rows:
        turns += [{'from': 'human', 'value': IMAGE_PLACEHOLDER.join(pieces)}, {'from': 'gpt', 'value': answer}]
        n += len(pieces) - 1
    images = [f'img{i}.jpg' for i in range(max(0, n + off))]
    if len(images) != n:
        with pytest.raises(ConversationError, match='placeholder'): Conversation.from_llava(turns, images)
        return
    c = Conversation.from_llava(turns, images)
    assert [p.item.src for p in c.images] == images
    for t, d in zip(c.turns, turns):   # the text around the images is kept character for character
        assert ''.join(p.text if isinstance(p, Text) else IMAGE_PLACEHOLDER for p in t.content) == d['value']

# --- what is refused ----------------------------------------------------------------------------------------

bad_coords = st.sampled_from([float('nan'), float('inf'), -1.0, 5000.0])

@many
@given(st.integers(0, 3), bad_coords, st.booleans())
def test_bad_boxes_are_refused_with_their_index(i, v, swap):
    box = [10.0, 20.0, 30.0, 40.0]
    box[i] = v
    if swap: box = [box[2], box[3], box[0], box[1]]
    with pytest.raises(ConversationError, match=r'boxes\[1\]'):
        ImageRef('a.jpg', size=(100, 100), boxes=[[1, 1, 2, 2], box])

# --- readers fail only with ConversationError ---------------------------------------------------------------

keys = st.sampled_from(['role', 'content', 'type', 'text', 'image', 'url', 'path', 'image_url', 'video', 'boxes', 'labels', 'size',
                        'region', 'fps', 'name', 'arguments', 'tool_calls', 'function', 'id', 'tool_call_id', 'error', 'from', 'value'])
words = st.sampled_from(['system', 'user', 'assistant', 'tool', 'human', 'gpt', 'text', 'image', 'video', 'tool_call', 'tool_result',
                         'image_url', 'Crop', '<image>', '<video>', 'a.jpg', '{"box": [1, 2, 3, 4]}', '{bad', ''])
junk_scalars = st.none() | st.booleans() | st.integers(-5, 5000) | st.floats() | words | st.text(max_size=5)
junk = st.recursive(junk_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=5), max_leaves=25)

@many
@given(junk)
def test_message_readers_raise_only_conversation_errors(d):
    for read in (Conversation.from_messages, Conversation.from_dict, Conversation.from_llava):
        try: c = read(d)
        except ConversationError: continue
        assert isinstance(c, Conversation)   # and what was read writes back the same (NaN included, hence JSON text)
        assert Conversation.from_messages(c.to_messages(), meta=c.meta).to_json() == c.to_json()

@many
@given(st.text(max_size=50))
def test_from_json_raises_only_conversation_errors(s):
    try: Conversation.from_json(s)
    except ConversationError: pass

def test_nan_arguments_survive_json():
    c = Conversation([('user', 'q'), ('assistant', [ToolCall('Crop', {'box': [float('nan'), 0, 1, 1]}), ToolResult('bad box', error=True)])])
    back = Conversation.from_json(c.to_json())
    assert math.isnan(back.tool_calls[0].item.arguments['box'][0]) and back.tool_pairs[0][1].item.error

FIELDS = {ImageRef: ('src', 'size', 'region', 'boxes', 'labels'), VideoRef: ('src', 'fps'), ToolCall: ('name', 'arguments', 'text', 'id'),
          ToolResult: ('content', 'name', 'error', 'id'), Turn: ('role', 'content'), Text: ('text',), Conversation: ('turns', 'system', 'meta')}
GOOD = {'src': 'a.jpg', 'name': 'Crop', 'content': 'x', 'role': 'user', 'text': 'x', 'turns': [('user', 'x')]}

@many
@given(st.sampled_from(list(FIELDS)), st.data())
def test_parts_raise_only_conversation_errors(cls, data):
    "Any field set to junk (the others valid or left out): built, or refused with a ConversationError."
    kw = {f: GOOD[f] for f in FIELDS[cls] if f in GOOD}
    kw.update(data.draw(st.dictionaries(st.sampled_from(FIELDS[cls]), junk | st.just(()) | st.just([[1, 2, 3, 4]]), min_size=1)))
    try: cls(**kw)
    except ConversationError: pass
