"""R-GRPO rewards (vlmkit.rewards) under hypothesis: no reward raises on any text or tag soup, a conversational
completion scores what its text scores, and every documented hack earns no more than a well-formed wrong answer, for
random images, gold boxes and families (5,000 examples each). Then TRL's GRPOTrainer trains a tiny random model for two
steps with the rewards passed in as they are (TRL is a test-only dependency)."""
import json, math
import pytest
from hypothesis import given, settings, strategies as st
from vlmkit.boxes import convert_boxes, format_boxes
from vlmkit.family import FAMILIES
from vlmkit.rewards import (accuracy_reward, combine, crop_reward, format_reward, iou_hit_reward, iou_reward,
                            overlong_penalty, parse_reply)

MANY = settings(max_examples=5000, deadline=None)
FAMS = list(FAMILIES)
SIZE, GOLD, RESIZED = (200, 100), [20, 10, 60, 50], (280, 140)
BOX_REWARDS = [format_reward, iou_reward, iou_hit_reward, crop_reward]
ALL = [*BOX_REWARDS, accuracy_reward, overlong_penalty(64), combine({format_reward: 0.5, iou_reward: 1, crop_reward: 1})]

def scores(text_or_msgs, syntax, solution=GOLD, size=SIZE, resized=RESIZED) -> list:
    "Every reward of one completion."
    cols = dict(solution=[solution], image_size=[size], syntax=syntax, resized_size=[resized])
    return [fn(None, [text_or_msgs], **cols)[0] for fn in ALL]

def check(values):
    for v in values: assert v is None or (isinstance(v, float) and math.isfinite(v)), values

@MANY
@given(st.text(), st.sampled_from(FAMS))
def test_never_raise_on_arbitrary_text(text, syntax):
    values = scores(text, syntax)
    check(values)
    assert scores([{'role': 'assistant', 'content': text}], syntax) == values   # conversational form: same scores
    check(scores(text, syntax, solution=text))                                 # an arbitrary gold: a score or None

PIECES = ['<think>', '</think>', '<answer>', '</answer>', '<tool_call>', '</tool_call>', '<image>', 'Crop [20, 10, 60, 50]',
          'Crop [nan, 1, 2, 3]', 'Crop [0, 0, 200, 100]', '{"name": "Crop", "arguments": {"box": [1, 2, 80, 90]}}', ' ', '\n',
          '42', 'B', 'cup', 'nan', '1e999', '-', ',', '[[', ']]', '[', ']', '(', ')', '<box>', '</box>', '<ref>', '</ref>',
          '[[100, 100, 300, 500]]', '(0.100,0.100),(0.300,0.500)', '{"bbox_2d": [28, 14, 84, 70]}', '{"bbox_2d": [', '"', '{', '}']

@MANY
@given(st.lists(st.sampled_from(PIECES), max_size=24).map(''.join), st.sampled_from(FAMS), st.sampled_from([GOLD, '42', 'B', None]))
def test_never_raise_on_tag_soup(text, syntax, solution):
    check(scores(text, syntax, solution=solution))
    check(scores([{'role': 'assistant', 'content': [{'type': 'text', 'text': text}], 'tool_calls': [{'function': {'name': 'Crop', 'arguments': text}}]},
                  {'role': 'tool', 'content': text}], syntax, solution=solution))

def done(answer:str, think:str='I looked at the image.') -> str: return f"<think>{think}</think><answer>{answer}</answer>"

def raw_box(syntax:str, v) -> str:
    "A box written in `syntax` with whatever numbers `v` holds (NaN, out of range, inverted): what a model can write."
    if syntax == 'ovis2_5': return '<box>({:.3f},{:.3f}),({:.3f},{:.3f})</box>'.format(*v)
    if syntax == 'internvl3_5': return '<box>[[{:.0f}, {:.0f}, {:.0f}, {:.0f}]]</box>'.format(*v)
    return '```json\n' + json.dumps([{'bbox_2d': [round(x) if math.isfinite(x) else x for x in v], 'label': 'it'}]) + '\n```'

def extent(syntax:str, size, resized) -> tuple:
    return {'unit': (1, 1), 'k1000': (1000, 1000), 'resized_pixel': resized}[FAMILIES[syntax].syntax.space]

@st.composite
def grounding(draw):
    "An image size, its model-input size, a gold box (5% to 90% of each side, so the whole image is not a right answer) and a family."
    W, H = draw(st.integers(50, 1200)), draw(st.integers(50, 1200))
    w, h = draw(st.floats(0.05, 0.9)) * W, draw(st.floats(0.05, 0.9)) * H
    x, y = draw(st.floats(0, 1)) * (W - w), draw(st.floats(0, 1)) * (H - h)
    resized = (28 * draw(st.integers(2, 40)), 28 * draw(st.integers(2, 40)))
    return (W, H), resized, [x, y, x + w, y + h], draw(st.sampled_from(FAMS))

HACKS = ['reasoning only', 'empty answer', 'tag spam', 'nested tags', 'whole-image box', 'box spam', 'NaN', 'out of range',
         'inverted', 'tool spam', 'bad crop']

@MANY
@given(grounding(), st.sampled_from(HACKS), st.integers(2, 6), st.data())
def test_every_hack_earns_no_more_than_a_well_formed_wrong_answer(case, hack, k, data):
    size, resized, gold, syntax = case
    space, (ex, ey) = FAMILIES[syntax].syntax.space, extent(syntax, size, resized)
    mine = convert_boxes([gold], 'pixel', space, size, resized)[0].tolist()
    right = format_boxes([mine], syntax, labels='it', size=size, resized_size=resized)
    crop = lambda b: f"<tool_call>Crop {json.dumps([round(v, 1) for v in b])}</tool_call><image>"
    corner = st.tuples(st.floats(0, 0.4), st.floats(0, 0.4), st.floats(0.6, 1), st.floats(0.6, 1))
    other = lambda: [f * e for f, e in zip(data.draw(corner), (ex, ey, ex, ey))]
    bad = list(mine)
    if hack == 'NaN': bad[data.draw(st.integers(0, 3))] = math.nan
    if hack == 'out of range': i = data.draw(st.integers(2, 3)); bad[i] = (ex, ey)[i - 2] * data.draw(st.floats(1.2, 10))
    if hack == 'inverted': bad = [mine[2], mine[1], mine[0], mine[3]] if data.draw(st.booleans()) else [mine[0], mine[3], mine[2], mine[1]]
    text = {'reasoning only': f"<think>It is {right}</think>",
            'empty answer': f"<think>It is {right}</think><answer>{data.draw(st.sampled_from(['', ' ', chr(10)]))}</answer>",
            'tag spam': done(right) * k,
            'nested tags': data.draw(st.sampled_from([f"<think>a<answer>{right}</answer></think><answer>{right}</answer>",
                                                     f"<think>a</think><answer><think>b</think>{right}</answer>",
                                                     f"<answer><think>a</think>{right}</answer>"])),
            'whole-image box': done(raw_box(syntax, [0, 0, ex, ey])),
            'box spam': done(' '.join(raw_box(syntax, b) for b in data.draw(st.permutations([mine] + [other() for _ in range(k - 1)])))),
            'NaN': done(raw_box(syntax, bad) + (' ' + right if data.draw(st.booleans()) else '')),
            'out of range': done(raw_box(syntax, bad) + (' ' + right if data.draw(st.booleans()) else '')),
            'inverted': done(raw_box(syntax, bad) + (' ' + right if data.draw(st.booleans()) else '')),
            'tool spam': done('I cannot find it.', 'look ' + crop(gold) * (3 + k)),
            'bad crop': done('I cannot find it.', 'look ' + crop([gold[0], gold[1], gold[0] - 1, gold[3]]))}[hack]
    wrong = done('I cannot find it.')
    cols = dict(solution=[gold] * 2, image_size=[size] * 2, syntax=syntax, resized_size=[resized] * 2)
    for fn in BOX_REWARDS:
        h, w = fn(None, [text, wrong], **cols)
        assert h <= w, (fn.__name__, hack, text, h, w)
    if hack in ('tool spam', 'bad crop'):   # with the right answer, spam and bad crops add nothing to it
        spam = text.replace('I cannot find it.', right)
        for fn in BOX_REWARDS:
            h, r = fn(None, [spam, done(right)], **cols)
            assert h <= r, (fn.__name__, hack, spam, h, r)

def test_a_right_box_scores():
    "The generator's right answers are right: the hack test compares against something that can score."
    for syntax in FAMS:
        box = convert_boxes([GOLD], 'pixel', FAMILIES[syntax].syntax.space, SIZE, RESIZED)[0]
        text = done(format_boxes([box], syntax, size=SIZE, resized_size=RESIZED), 'look ' + f"<tool_call>Crop {GOLD}</tool_call><image>")
        assert parse_reply(text).ok and scores(text, syntax)[:4] == [1.0, pytest.approx(1.0), 1.0, 0.5], syntax


def test_trl_grpo_trainer_runs_with_vlmkit_rewards(tmp_path):
    "TRL's GRPOTrainer, two steps on a tiny random Qwen3 over conversational prompts, vlmkit's rewards passed in as they are."
    trl = pytest.importorskip('trl', reason='TRL is a test-only dependency: pip install trl')
    import torch
    from datasets import Dataset
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from vlmkit.testing import tiny_llm_config, tiny_tokenizer
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = Qwen3ForCausalLM(Qwen3Config(**tiny_llm_config(tok)))
    rows = [dict(prompt=[{'role': 'user', 'content': f'Where is the cup in picture {i}?'}], solution=GOLD, image_size=list(SIZE),
                 syntax='internvl3_5') for i in range(4)]
    combined = combine({format_reward: 0.5, iou_reward: 1.0, crop_reward: 1.0}, name='r_grpo')
    funcs = [format_reward, iou_reward, iou_hit_reward, crop_reward, overlong_penalty(16, soft=4), combined]
    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=12,
                          max_steps=2, learning_rate=1e-4, logging_steps=1, report_to=[], use_cpu=True, save_strategy='no',
                          seed=0, bf16=False, disable_tqdm=True)
    trainer = trl.GRPOTrainer(model=model, processing_class=tok, reward_funcs=funcs, train_dataset=Dataset.from_list(rows), args=args)
    trainer.train()
    logs = [h for h in trainer.state.log_history if 'reward' in h]
    assert trainer.state.global_step == 2 and len(logs) == 2
    for name in ('format_reward', 'iou_reward', 'iou_hit_reward', 'crop_reward', 'overlong_penalty', 'r_grpo'):
        assert f'rewards/{name}/mean' in logs[-1], sorted(logs[-1])
    assert 'r_grpo/format_reward' in logs[-1], sorted(logs[-1])       # combine's components, through TRL's log_metric
    assert set(combined.last) == {'format_reward', 'iou_reward', 'crop_reward'} and len(combined.last['iou_reward']) == 4
