"""Property and fixture tests for vlmkit.tools: the call grammar round-trips and never raises on text, the registry
answers every call (a user's tool too) without raising, the crop tool's geometry holds for any box in any space,
conversations continue with results where they belong, and the research data's legacy crop calls convert exactly
to its final form."""
import json
from dataclasses import replace
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from vlmkit.conversation import Conversation, ConversationError, ImageRef, Text, ToolCall, ToolResult
from vlmkit.images import synthetic_image
from vlmkit.testing import require_fixture
from vlmkit.tools import (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, LEGACY_CROP_RE, RESEARCH_CROP_SYSTEM, Tool, ToolContext, ToolError,
                          Tools, answer_pending, crop_box, crop_tool, croptool_conversation, default_tools, format_tool_call,
                          legacy_crop_conversation, parse_tool_calls, with_generated)

some = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------------------------

names = st.from_regex(r'[A-Za-z_][A-Za-z0-9_.\-]{0,10}', fullmatch=True)
no_tags = lambda s: TOOL_CALL_OPEN not in s and TOOL_CALL_CLOSE not in s
scalars = (st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=8).filter(no_tags))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5).filter(no_tags), c, max_size=3), max_leaves=6)
arguments = st.dictionaries(st.text(min_size=1, max_size=6).filter(no_tags), values, max_size=3)
PIECES = [TOOL_CALL_OPEN, TOOL_CALL_CLOSE, 'Crop', 'crop', ' [1, 2, 3, 4]', '[10, 20', '{"name": "Crop"', ', "arguments": {"box": [1, 2, 3, 4]}}',
          '"', '{', '}', '[', ']', ',', ' ', '\n', 'NaN', 'Define', ' "bottle"', '{Crop a [1, 2, 3, 4]}']
messy = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=12).map(''.join)

def glossary_tools() -> Tools:
    "The crop tool and a user's tool with three parameters."
    tools = default_tools()
    @tools.register(name='Define', description='Look up a word.',
                    parameters={'type': 'object', 'properties': {'word': {'type': 'string'}, 'lang': {'type': 'string'}, 'n': {'type': 'integer'}},
                                'required': ['word']})
    def define(args, ctx):
        if args['word'] != 'bottle': raise ToolError(f"no entry for {args['word']!r}")
        return 'a container for liquids'
    return tools

# --- grammar ------------------------------------------------------------------------------------------------

@some
@given(name=names, args=arguments, style=st.sampled_from(['plain', 'json']), before=st.text(max_size=10).filter(no_tags), after=st.text(max_size=10).filter(no_tags))
def test_a_written_call_parses_back_where_it_sits(name, args, style, before, after):
    tools = glossary_tools()
    call = format_tool_call(name, args, style, tools)
    text = before + call + after
    p = parse_tool_calls(text, tools)
    assert p.rejected == [] and len(p.calls) == 1
    c = p.calls[0]
    assert (c.name, c.arguments, c.text) == (name, args, call)
    assert text[slice(*p.spans[0])] == call
    assert ''.join(x.text for x in p.parts()) == text

@some
@given(word=st.text(max_size=10).filter(no_tags), lang=st.text(max_size=4).filter(no_tags), n=st.integers(-5, 5), k=st.integers(1, 3))
def test_plain_calls_map_values_to_parameters_in_order(word, lang, n, k):
    tools = glossary_tools()
    args = dict(list({'word': word, 'lang': lang, 'n': n}.items())[:k])
    text = format_tool_call('Define', args, 'plain', tools)
    assert '{' not in text[len(TOOL_CALL_OPEN):] or '{' in word + lang          # positional, not an object
    assert parse_tool_calls(text, tools).calls[0].arguments == args

@settings(max_examples=1000, deadline=None)
@given(text=messy)
def test_parsing_never_raises_and_accounts_for_every_character(text):
    p = parse_tool_calls(text, glossary_tools())
    for c, (s, e) in zip(p.calls, p.spans): assert text[s:e] == c.text
    for b in p.rejected:
        assert text[slice(*b.span)] == b.text and b.reason
        assert b.closed == (b.text.startswith(TOOL_CALL_OPEN) and b.text.endswith(TOOL_CALL_CLOSE) and len(b.text) > len(TOOL_CALL_OPEN))
    spans = sorted([*p.spans, *(b.span for b in p.rejected)])
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))                # nothing counted twice
    assert ''.join(x.text for x in p.parts()) == text
    assert sum(isinstance(x, ToolCall) for x in p.parts()) == len(p.calls) + sum(b.closed for b in p.rejected)

@pytest.mark.parametrize('text, reason', [
    ('<tool_call>Crop [1, 2, 3</tool_call>', "arguments are not JSON values: '[1, 2, 3'"),
    ('<tool_call>Crop [1, 2, 3, 4],</tool_call>', 'a comma after the last argument'),
    ('<tool_call>Crop [1, 2, 3, 4] [1, 2, 3, 4]</tool_call>', 'Crop takes 1 argument (box), got 2'),
    ('<tool_call>  </tool_call>', 'empty call: no tool name'),
    ('<tool_call>[1, 2, 3, 4]</tool_call>', 'expected a tool name, then its arguments'),
    ('<tool_call>{"name": "Crop", "arguments": {"box": [1, 2, 3, 4]}</tool_call>', 'malformed JSON'),
    ('<tool_call>{"arguments": {}}</tool_call>', 'the JSON has no "name"'),
    ('<tool_call>{"name": "Crop", "args": {}}</tool_call>', "unexpected keys ['args']"),
    ('<tool_call>{"name": "Crop", "arguments": "{\\"box\\": [1,"}</tool_call>', '"arguments" is a string that is not JSON'),
    ('<tool_call>["Crop"]</tool_call>', 'expected a tool name'),
    ('text </tool_call>', '</tool_call> with no <tool_call> before it'),
    ('<tool_call>Crop [1, 2, 3, 4]', 'unclosed <tool_call>: the text ends inside the call'),
    ('<tool_call>Crop <tool_call>Crop [1, 2, 3, 4]</tool_call>', 'unclosed <tool_call>: another one opens'),
])
def test_malformed_calls_are_reported_with_a_reason(text, reason):
    p = parse_tool_calls(text)
    assert p.rejected and reason in p.rejected[0].reason, p.rejected

def test_openai_style_string_arguments_and_names_with_dots():
    p = parse_tool_calls('<tool_call>{"name": "img.crop", "arguments": "{\\"box\\": [1, 2, 3, 4]}"}</tool_call>')
    assert (p.calls[0].name, p.calls[0].arguments) == ('img.crop', {'box': [1, 2, 3, 4]})

# --- registry -----------------------------------------------------------------------------------------------

def test_a_users_tool_runs_and_refuses_through_the_registry():
    tools = glossary_tools()
    assert set(tools) == {'Crop', 'Define'}
    ok = tools.run(ToolCall('Define', {'word': 'bottle'}))
    assert ok == ToolResult(['a container for liquids'], name='Define')
    assert tools.run(ToolCall('Define', {'word': 'lemon'})).text == "Define failed: no entry for 'lemon'"
    assert tools.run(ToolCall('Define', {'word': 'bottle', 'n': 1.5})).text == 'Define failed: bad arguments: n: expected an integer, got 1.5'
    assert tools.run(ToolCall('Define', {'word': 'bottle', 'n': 2.0})).error is False       # 2.0 is an integer in JSON Schema
    assert tools.run(ToolCall('Lookup', {})).text == "Lookup failed: unknown tool 'Lookup'; the tools are Crop, Define"
    r = tools.run(ToolCall('Define', {'word': 'lemon'}, id='c7'))
    assert (r.error, r.name, r.id) == (True, 'Define', 'c7')
    assert [s['function']['name'] for s in tools.schemas()] == ['Crop', 'Define']
    assert '<tool_call>Define word lang n</tool_call>: Look up a word.' in tools.system_prompt()

def test_a_tool_may_return_images_lists_or_a_result():
    img, _ = synthetic_image(1, size=(64, 48), n_objects=1)
    tools = Tools([Tool('Echo', lambda a, ctx: ['seen:', img]), Tool('Same', lambda a, ctx: ToolResult(['x'], name='Other'))])
    r = tools.run(ToolCall('Echo', {}, id='a'))
    assert (r.text, len(r.images), r.name, r.id) == ('seen:', 1, 'Echo', 'a')
    assert tools.run(ToolCall('Same', {})).name == 'Same'                         # named after the call it answers
    with pytest.raises(TypeError, match='returned what is not text and images'): Tools([Tool('Bad', lambda a, ctx: None)]).run(ToolCall('Bad', {}))
    with pytest.raises(ValueError, match='parameters must be a JSON Schema object'): Tool('X', print, parameters={'type': 'array'})
    with pytest.raises(TypeError, match='not both'): tools.register(Tool('Y', print), name='Z')

@some
@given(name=st.sampled_from(['Crop', 'Define', 'crop', 'Nope']), args=arguments | st.fixed_dictionaries({'box': st.lists(st.floats(-50, 500) | st.just(float('nan')), max_size=5)}))
def test_running_any_call_answers_it_without_raising(name, args):
    img, _ = synthetic_image(2, size=(320, 240), n_objects=1)
    conv = Conversation([('user', [ImageRef(img), 'Look.']), ('assistant', [ToolCall(name, args)])])
    r = glossary_tools().run(conv.tool_calls[0].item, ToolContext(conv, conv.tool_calls[0]))
    assert isinstance(r, ToolResult) and r.name == name
    assert r.error or r.images or r.text

# --- the crop tool --------------------------------------------------------------------------------------------

@some
@given(w=st.integers(40, 2000), h=st.integers(40, 2000), data=st.data())
def test_an_image_box_in_pixel_space_comes_back_exactly(w, h, data):
    x1 = data.draw(st.floats(0, w - 29)); x2 = data.draw(st.floats(x1 + 29, w))
    y1 = data.draw(st.floats(0, h - 29)); y2 = data.draw(st.floats(y1 + 29, h))
    if max(x2 - x1, y2 - y1) / min(x2 - x1, y2 - y1) > 100: return
    assert crop_box([x1, y1, x2, y2], (w, h)) == (x1, y1, x2, y2)

coords = st.floats(-2000, 3000) | st.sampled_from([float('nan'), float('inf'), -float('inf'), 0.0])

@settings(max_examples=1000, deadline=None)
@given(box=st.lists(coords, min_size=4, max_size=4), size=st.tuples(st.integers(1, 2000), st.integers(1, 2000)),
       space=st.sampled_from(['pixel', 'unit', 'k1000', 'resized_pixel']), margin=st.sampled_from([0, 0.1, 0.5]),
       min_side=st.sampled_from([1, 28]), max_aspect=st.sampled_from([3, 100]), clamp=st.booleans())
def test_a_crop_is_inside_the_image_big_enough_and_not_too_thin_or_a_tool_error(box, size, space, margin, min_side, max_aspect, clamp):
    if space == 'unit': box = [v / 1000 for v in box]
    try: x1, y1, x2, y2 = crop_box(box, size, space, (size[0] + 13, size[1] + 7), min_side, max_aspect, margin, clamp)
    except ToolError as e:
        assert str(e).startswith(('the box', 'a box'))
        return
    assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
    w, h = x2 - x1, y2 - y1
    assert min(w, h) >= min_side and max(w, h) / min(w, h) <= max_aspect

def test_crop_settings_and_families():
    assert crop_box([100, 100, 200, 150], (640, 480), margin=0.1) == (90, 95, 210, 155)
    assert crop_tool('ovis2_5').parameters['properties']['box']['description'].endswith('as fractions of the image width and height (0 to 1)')
    assert 'thousandths' in crop_tool('internvl3_5').description and 'as you see it' in crop_tool('qwen2_5_vl').description
    with pytest.raises(ValueError, match="crop space 'pixels'"): crop_tool('pixels')

def test_the_crop_tool_crops_the_last_user_image_and_a_region_within_its_region():
    a, _ = synthetic_image(3, size=(320, 240), n_objects=1)
    b, _ = synthetic_image(4, size=(200, 100), n_objects=1)
    conv = Conversation([('user', [ImageRef(a), ImageRef(b, region=(50, 20, 150, 100)), 'Compare.']), ('assistant', [ToolCall('Crop', {'box': [10, 10, 60, 60]})])])
    r = default_tools().run(conv.tool_calls[0].item, ToolContext(conv, conv.tool_calls[0]))
    assert r.images[0].src is b and r.images[0].region == (60, 30, 110, 80)
    r = default_tools().run(ToolCall('Crop', {'box': [10, 10, 120, 60]}), ToolContext(conv, conv.tool_calls[0]))
    assert r.images[0].region == (60, 30, 150, 80)                          # clamped to the given region, not to the whole image
    assert Image_size(r.images[0]) == (90, 50)

def Image_size(ref): return ref.load().size

def test_qwen_space_needs_the_size_the_model_saw():
    img, _ = synthetic_image(5, size=(640, 480), n_objects=1)
    conv = Conversation([('user', [ImageRef(img), 'Look.']), ('assistant', [ToolCall('Crop', {'box': [64.4, 47.6, 322, 238]})])])
    tools = default_tools('qwen2_5_vl')
    r = tools.run(conv.tool_calls[0].item, ToolContext(conv, conv.tool_calls[0], resized_sizes=[(644, 476)]))
    assert r.images[0].region == pytest.approx((64, 48, 320, 240))
    with pytest.raises(ValueError, match='resized_pixel space: run it with ToolContext'):
        tools.run(conv.tool_calls[0].item, ToolContext(conv, conv.tool_calls[0]))

def test_a_missing_image_file_is_raised_naming_it(tmp_path):
    conv = Conversation([('user', [ImageRef(str(tmp_path/'gone.jpg')), 'Look.']), ('assistant', [ToolCall('Crop', {'box': [1, 1, 50, 50]})])])
    with pytest.raises(ConversationError, match='gone.jpg'): answer_pending(conv)

# --- continuing a conversation ------------------------------------------------------------------------------

def prompt():
    img, objs = synthetic_image(6, size=(320, 240), n_objects=2)
    return Conversation([('user', [ImageRef(img), 'Where is it?'])]), objs

def test_results_follow_their_calls_inline_or_in_a_tool_turn():
    conv, objs = prompt()
    box = objs[0]['box']
    gen = f"A <tool_call>Crop {json.dumps(box)}</tool_call> and <tool_call>Nope</tool_call>"
    c, parsed = with_generated(conv, gen)
    assert [type(p).__name__ for p in c.turns[1].content] == ['Text', 'ToolCall', 'Text', 'ToolCall']
    inline = answer_pending(c)
    assert [type(p).__name__ for p in inline.turns[1].content][-2:] == ['ToolResult', 'ToolResult']
    (c1, r1), (c2, r2) = inline.tool_pairs
    assert r1.item.images[0].region == tuple(map(float, box)) and r2.item.error
    assert answer_pending(inline) is inline                                     # nothing pending: unchanged
    tool_turn = answer_pending(c, inline=False)
    assert [t.role for t in tool_turn.turns] == ['user', 'assistant', 'tool'] and len(tool_turn.turns[2].content) == 2
    after = with_generated(tool_turn, 'Done.')[0]
    assert [t.role for t in after.turns] == ['user', 'assistant', 'tool', 'assistant']

def test_calls_with_ids_are_answered_by_id():
    conv, objs = prompt()
    c = conv.with_turn('assistant', [ToolCall('Crop', {'box': objs[0]['box']}, id='a'), ToolCall('Crop', {'box': objs[1]['box']}, id='b')])
    done = answer_pending(c)
    assert [(call.item.id, res.item.id) for call, res in done.tool_pairs] == [('a', 'a'), ('b', 'b')]

@some
@given(text=messy.filter(lambda s: '<image>' not in s))
def test_any_generated_text_continues_the_conversation(text):
    conv, _ = prompt()
    c, parsed = with_generated(conv, text, glossary_tools())
    c = answer_pending(c, glossary_tools())
    assert c.pending_calls == ()
    if text: assert ''.join(p.text for p in c.turns[-1].content if isinstance(p, (Text, ToolCall))) == text

# --- the research data ----------------------------------------------------------------------------------------

def fixture_records():
    legacy = require_fixture('seed/refcoco/refcoco_qa_pairs_sample.jsonl')
    final = require_fixture('seed/refcoco/refcoco_qa_pairs_croptool_sample.json')
    return [json.loads(l) for l in legacy.read_text().splitlines()], json.loads(final.read_text())

def test_legacy_records_convert_exactly_to_the_final_form():
    legacy, final = fixture_records()
    converted = [legacy_crop_conversation(r, f"legacy:{i + 1}") for i, r in enumerate(legacy)]
    read = [croptool_conversation(r, f"final[{i}]") for i, r in enumerate(final)]
    for i, (f, rec) in enumerate(zip(read, final)):
        assert f.system == rec['conversations'][0]['value'] == RESEARCH_CROP_SYSTEM
        assert replace(converted[i], meta={}) == replace(f, meta={})             # the final records are legacy records 1-3, in order
        assert converted[i].meta['image_id'] == f.meta['image_id'] == rec['image_id']
        # the final text is the legacy text with each {Crop names [box]} -> <tool_call>Crop [box]</tool_call><image>
        answer = LEGACY_CROP_RE.sub(lambda m: f"<tool_call>Crop [{m['box']}]</tool_call><image>", legacy[i]['QnA'][0]['A3'])
        assert answer == rec['conversations'][2]['value']
    for rec, conv in zip(legacy, converted):
        written = [m['box'] for m in LEGACY_CROP_RE.finditer(rec['QnA'][0]['A3'])]
        assert [c.item.text for c in conv.tool_calls] == [f"<tool_call>Crop [{b}]</tool_call>" for b in written]
        assert [r.item.images[0].region for _, r in conv.tool_pairs] == [tuple(float(v) for v in b.split(',')) for b in written]
        assert [r.item.images[0].src for _, r in conv.tool_pairs] == [rec['image_path']] * len(written)
        assert [len(t) for t in conv.meta.get('legacy_crop_targets', [])] == [len(m['targets'].split(',')) for m in LEGACY_CROP_RE.finditer(rec['QnA'][0]['A3'])]
        assert Conversation.from_json(conv.to_json()) == conv                      # survives JSON
        assert conv.pending_calls == ()

def test_the_converted_calls_run_to_the_same_crops():
    "The crop tool in pixel space answers each converted call with the crop the data holds (the COCO images are not in the fixtures: 640x480, which holds every box, stands in for their size)."
    legacy, _ = fixture_records()
    tools = default_tools()
    for i, rec in enumerate(legacy):
        conv = legacy_crop_conversation(rec).map_images(lambda r: replace(r, size=(640, 480)))
        for call, res in conv.tool_pairs:
            assert tools.run(call.item, ToolContext(conv, call)) == res.item, (i, call)

@pytest.mark.parametrize('record, says', [
    ({'image_path': 'a.jpg', 'QnA': [{'Q': 'Q?', 'A3': 'x {Crop a [1, 2, 3, 4'}]}, 'legacy:5: QnA[0].A3: not {Crop names [x1, y1, x2, y2]} (no closing })'),
    ({'image_path': 'a.jpg', 'QnA': [{'Q': 'Q?', 'A3': 'x {Crop a [3, 2, 1, 4]}'}]}, 'legacy:5: QnA[0].A3'),
    ({'image_path': 'a.jpg', 'QnA': 'Q?'}, 'legacy:5: QnA: expected a list'),
    ({'image_path': 'a.jpg', 'QnA': []}, 'legacy:5: QnA: no question'),
    (['a.jpg'], 'legacy:5: expected a JSON object, got list'),
])
def test_bad_legacy_records_raise_one_located_error(record, says):
    with pytest.raises(ConversationError) as e: legacy_crop_conversation(record, 'legacy:5')
    assert says in str(e.value), str(e.value)

@pytest.mark.parametrize('record, says', [
    ({'image': 'a.jpg', 'conversations': [{'from': 'human', 'value': '<image>\nQ'}, {'from': 'gpt', 'value': '<tool_call>Crop [1, 2, 3]</tool_call><image>'}]},
     'final[0]: conversations[1].value: the <image> after the call at character 0 is not a crop: box: expected 4 items, got 3'),
    ({'image': 'a.jpg', 'conversations': [{'from': 'human', 'value': '<image>\nQ'}, {'from': 'bot', 'value': 'A'}]}, "conversations[1].from: unexpected speaker 'bot'"),
    ({'image': 'a.jpg', 'conversations': [{'from': 'gpt', 'value': 'A'}]}, 'an answer before any image'),
    ({'image': 'a.jpg', 'conversations': [{'from': 'human', 'value': '<image><image>'}]}, '2 <image> placeholders so far, 1 image(s)'),
    ({'conversations': []}, "image: no 'image'"),
])
def test_bad_final_records_raise_one_located_error(record, says):
    with pytest.raises(ConversationError) as e: croptool_conversation(record, 'final[0]')
    assert says in str(e.value), str(e.value)

def test_a_final_call_without_its_crop_stays_pending():
    conv = croptool_conversation({'image': 'a.jpg', 'conversations': [{'from': 'human', 'value': '<image>\nQ'},
                                                                       {'from': 'gpt', 'value': 'Look <tool_call>Crop [1, 2, 30, 40]</tool_call>'}]})
    assert len(conv.pending_calls) == 1

@pytest.mark.parametrize('family', ['ovis2_5', 'internvl3_5', 'qwen2_5_vl'])
def test_a_converted_record_renders_with_its_crops_and_trains_exactly_the_answer(family):
    "Every family renders a legacy record with three crops (a synthetic 640x480 image stands in for the absent COCO one): one image and three crops, and the trained tokens are the answer as written plus <|im_end|>."
    from vlmkit.family import FAMILIES, tool_call_text
    legacy, _ = fixture_records()
    img, _ = synthetic_image(0, size=(640, 480), n_objects=2)
    conv = legacy_crop_conversation(legacy[20]).map_images(lambda r: replace(r, src=img))
    fam = FAMILIES[family]
    _, processor = fam.tiny()
    r = fam.render(conv, processor, training=True)
    answer = ''.join(p.text if isinstance(p, Text) else tool_call_text(p) for p in conv.turns[1].content if isinstance(p, (Text, ToolCall)))
    assert getattr(processor, 'tokenizer', processor).decode(r.input_ids[r.labels != -100]) == answer + '<|im_end|>'
    assert len(r.image_sizes) == 4
