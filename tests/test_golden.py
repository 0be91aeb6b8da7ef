"""Golden tests on the research data's crop-tool trajectories (`../shared/fixtures/seed/refcoco`), for every family:
what training trains is exactly the assistant's own text (its reasoning, its tool calls, its answers; never what a
tool inserted) plus each assistant turn's `<|im_end|>`; every crop's visual tokens sit right after the `</tool_call>`
that asked for it; and a trajectory renders for training exactly as the rollout renders it for inference, token for
token. The COCO images themselves are not in the fixtures: each is replaced by a seeded noise image of a size that
holds every box, so the boxes, crops and text are the data's own."""
import json
from dataclasses import replace
import pytest, torch
from vlmkit.conversation import Conversation, Text, ToolCall, Turn
from vlmkit.family import FAMILIES
from vlmkit.testing import noise_image, require_fixture
from vlmkit.tools import croptool_conversation, legacy_crop_conversation

def _trajectories() -> list[Conversation]:
    root = require_fixture('seed/refcoco')
    final = [croptool_conversation(r) for r in json.loads((root/'refcoco_qa_pairs_croptool_sample.json').read_text())]
    legacy = [legacy_crop_conversation(json.loads(l)) for l in (root/'refcoco_qa_pairs_sample.jsonl').read_text().splitlines() if l.strip()]
    with_calls = sorted((c for c in legacy if c.tool_calls), key=lambda c: -len(c.tool_calls))  # several calls first
    return final + with_calls[:12]

def _with_pixels(conv:Conversation, seed:int) -> Conversation:
    "`conv` with each image file replaced by noise large enough for every region and box on it (same regions, same text)."
    edges = [v for p in conv.images for b in ((p.item.region,) if p.item.region else ()) + tuple(p.item.boxes) for v in b]
    side = int(max([640, *edges])) + 1
    return conv.map_images(lambda ref: replace(ref, src=noise_image(seed, (side, side)), size=None))

@pytest.fixture(scope='module')
def trajectories():
    return [_with_pixels(c, i) for i, c in enumerate(_trajectories())]

@pytest.fixture(scope='module', params=list(FAMILIES))
def family(request):
    fam = FAMILIES[request.param]
    return fam, fam.tiny()[1]

def assistant_text(turn:Turn) -> str:
    "What the assistant wrote in `turn`: its text and tool calls as written; a tool's result is not its text."
    return ''.join(p.text if isinstance(p, Text) else p.text for p in turn.content if isinstance(p, (Text, ToolCall)))

def test_the_fixture_trajectories_call_tools(trajectories):
    assert len(trajectories) == 15 and sum(bool(c.tool_calls) for c in trajectories) == 14  # one final record answers without a crop
    assert max(len(c.tool_calls) for c in trajectories) > 1                                # some call the tool more than once

def test_trained_tokens_are_the_assistants_text(trajectories, family):
    fam, processor = family
    tok = getattr(processor, 'tokenizer', processor)
    for conv in trajectories:
        r = fam.render(conv, processor, training=True)
        expected = ''.join(assistant_text(t) + '<|im_end|>' for t in conv.assistant_turns)
        assert tok.decode(r.labels[r.labels != -100]) == expected, conv.meta

def test_each_crop_sits_right_after_its_call(trajectories, family):
    fam, processor = family
    tok = getattr(processor, 'tokenizer', processor)
    for conv in trajectories:
        r = fam.render(conv, processor, training=True)
        assert len(r.spans) == len(conv.visuals)
        for place, span in zip(conv.visuals, r.spans):
            if not place.from_tool: continue
            before = tok.decode(r.input_ids[max(0, span.start - 8):span.start][r.input_ids[max(0, span.start - 8):span.start] >= 0])
            assert before.endswith('</tool_call>'), (conv.meta, before)
            assert (r.labels[span.start:span.end] == -100).all()

def test_training_renders_what_the_rollout_saw(trajectories, family):
    "At every crop, the prompt a rollout renders (trajectory so far, assistant turn open) is the training ids' prefix."
    fam, processor = family
    tok = getattr(processor, 'tokenizer', processor)
    for conv in trajectories:
        full = fam.render(conv, processor, training=True)
        last = conv.turns[-1]
        for k, part in enumerate(last.content):
            prefix = Conversation(conv.turns[:-1] + (Turn('assistant', last.content[:k + 1]),), conv.system)
            prompt = fam.render(prefix, processor)
            assert torch.equal(full.input_ids[:len(prompt)], prompt.input_ids), (conv.meta, k)
        whole = fam.render(conv, processor)   # the finished trajectory as inference renders it: the turn still open
        assert torch.equal(full.input_ids[:len(whole)], whole.input_ids)
        assert tok.decode(full.input_ids[len(whole):]) == '<|im_end|>\n'
