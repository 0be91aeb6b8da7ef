"""Every family through the registry, the way the layers above use them: each public function of vlmkit that takes a
family (a `Family`, or a family's name where it asks for a box syntax) and each callable a `Family` carries is found by
walking the package, and runs here for all three families: render, collate packed and padded, the tiny model's forward
and loss, generate, load, box syntax. A family-taking function this file does not know how to run fails the walk, so
a new one cannot skip it."""
import dataclasses, importlib, inspect, pkgutil, tempfile
from pathlib import Path
import pytest, torch
import vlmkit
from vlmkit.boxes import convert_boxes, format_boxes, format_points, get_syntax, parse_boxes
from vlmkit.conversation import Conversation, ToolCall, ToolResult, Turn
from vlmkit.family import FAMILIES, Family, Rendered, family_of
from vlmkit.testing import noise_image

FAMILY_PARAMS = {'family', 'syntax'}  # parameter names by which a function takes a family

def public_functions():
    "(module.name, function) for every public function and method of vlmkit's modules."
    for m in pkgutil.walk_packages(vlmkit.__path__, 'vlmkit.'):
        if m.name.rpartition('.')[2].startswith('_'): continue
        mod = importlib.import_module(m.name)
        for name in getattr(mod, '__all__', []):
            obj = getattr(mod, name)
            if inspect.isfunction(obj) and obj.__module__ == mod.__name__: yield f"{m.name}.{name}", obj
            elif inspect.isclass(obj) and obj.__module__ == mod.__name__:
                for k, f in vars(obj).items():
                    if inspect.isfunction(f) and not k.startswith('_'): yield f"{m.name}.{name}.{k}", f

def family_taking() -> set[str]:
    "What takes a family: functions with a `family`/`syntax` parameter, `Family`'s methods, and the callables it holds."
    found = {n for n, f in public_functions() if FAMILY_PARAMS & set(inspect.signature(f).parameters)}
    fields = {fl.name: fl for fl in dataclasses.fields(Family)}
    found |= {f"vlmkit.family.Family.{k}" for k, f in vars(Family).items() if inspect.isfunction(f) and not k.startswith('_') and k not in fields}
    found |= {f"Family.{k}" for k, fl in fields.items() if 'Callable' in str(fl.type)}
    return found | {'vlmkit.family.family_of'}

BOX = [8., 6., 40., 30.]  # pixels of the 60x40 test image

def conversations(fam:Family, processor):
    "A prompt (image + question), its answer with a box in the family's own syntax, a crop-tool trajectory, and a text-only chat."
    image = noise_image(0, (60, 40))
    ask = Conversation([Turn('user', [image, 'Where is the cup?'])])
    r = fam.render(ask, processor)
    space = fam.syntax.space
    box = convert_boxes([BOX], 'pixel', space, size=r.image_sizes[0], resized_size=r.resized_sizes[0] if r.resized_sizes else None)
    answer = format_boxes(box, fam.syntax, labels='cup')
    answered = ask.with_turn('assistant', answer)
    crop = noise_image(1, (24, 20))
    tool = ask.with_turn('assistant', ['Let me look. ', ToolCall('crop', {'box': BOX}, text='<tool_call>Crop [8, 6, 40, 30]</tool_call>'),
                                       ToolResult([crop]), 'A cup.'])
    text = Conversation([Turn('user', 'Say hi.'), Turn('assistant', 'Hi.')])
    return dict(ask=ask, answered=answered, tool=tool, text=text, answer=answer, rendered_ask=r)

def test_the_walk_knows_every_family_taking_function():
    "This file runs each of them below; a new one must be added here (and run for every family)."
    assert family_taking() == set(RUN), f"not run here: {sorted(family_taking() - set(RUN))}; gone: {sorted(set(RUN) - family_taking())}"

def _run_boxes(fam, tiny):
    model, processor = tiny
    c = conversations(fam, processor)
    r = c['rendered_ask']
    resized = r.resized_sizes[0] if r.resized_sizes else None
    assert get_syntax(fam.name) is fam.syntax and get_syntax(fam) is fam.syntax
    parsed = parse_boxes(c['answer'], fam.name, size=r.image_sizes[0], resized_size=resized)
    back = parsed.boxes_in('pixel', r.image_sizes[0], resized)[0]
    assert abs(back - torch.tensor(BOX).numpy()).max() <= (1.0 if fam.syntax.integers else 0.05), (c['answer'], back)
    if fam.syntax.point or fam.syntax.kind == 'json': format_points([[0.5, 0.5]], fam.name)
    else: pytest.raises(ValueError, format_points, [[1, 2]], fam.name)

def _run_render(fam, tiny):
    model, processor = tiny
    c = conversations(fam, processor)
    tok = getattr(processor, 'tokenizer', processor)
    r = fam.render(c['answered'], processor, training=True)
    assert isinstance(r, Rendered) and r.labels.shape == r.input_ids.shape
    trained = tok.decode(r.labels[r.labels != -100])
    assert trained == c['answer'] + '<|im_end|>', trained            # only the answer and its end are trained
    prompt = fam.render(c['ask'], processor)
    assert prompt.labels is None and torch.equal(r.input_ids[:len(prompt)], prompt.input_ids)  # training = inference ids
    t = fam.render(c['tool'], processor, training=True)
    assert tok.decode(t.labels[t.labels != -100]) == 'Let me look. <tool_call>Crop [8, 6, 40, 30]</tool_call>A cup.<|im_end|>'
    assert len(t.image_sizes) == 2                                   # the crop is an image the model sees, never trains on

def _batch(fam, processor):
    c = conversations(fam, processor)
    return [fam.render(c[k], processor, training=True) for k in ('answered', 'tool', 'text')]

def _run_collate(fam, tiny):
    "Packed and padded batches of the same samples give the same loss; packed logits equal each sample's own."
    model, processor = tiny
    rendered = _batch(fam, processor)
    fam.enable_packing(model)
    with torch.no_grad():
        packed = model(**fam.collate(rendered, pack=True)).loss
        padded = model(**fam.collate(rendered, pack=False)).loss
        assert torch.isfinite(packed) and abs(packed - padded) <= 1e-5 * abs(padded), (packed, padded)
        inputs = fam.collate(rendered, pack=True)
        inputs.pop('labels')
        logits = model(**inputs).logits[0]
        start = 0
        for r in rendered:
            alone = fam.collate([r], pack=False)
            alone.pop('labels')
            own = model(**alone).logits[0]
            assert (logits[start:start + len(r)] - own).abs().max() < 1e-4
            start += len(r)

def _run_tiny(fam, tiny):
    model, processor = tiny
    assert family_of(model) is fam and family_of(fam.name) is fam and family_of(fam) is fam
    assert family_of(model.config) is fam

def _run_stop_ids(fam, tiny):
    model, processor = tiny
    tok = getattr(processor, 'tokenizer', processor)
    assert fam.stop_ids(processor) == [tok.convert_tokens_to_ids('<|im_end|>')]

def _run_generate(fam, tiny):
    "Two prompts of different lengths decoded together: each row as it decodes alone (greedy)."
    model, processor = tiny
    c = conversations(fam, processor)
    both = fam.generate(model, processor, [c['ask'], Conversation(c['text'].turns[:1])], max_new_tokens=4)
    alone = fam.generate(model, processor, [c['ask']], max_new_tokens=4)
    assert both.shape[0] == 2 and torch.equal(both[0, :alone.shape[1]], alone[0])
    gen_kwargs = fam.generation_kwargs(processor)
    assert isinstance(gen_kwargs, dict)

def _run_hooks(fam, tiny):
    "The hooks are what generate decodes with: the decoder hook names a module that runs every step."
    model, processor = tiny
    assert isinstance(fam.hooks.decoder(model), torch.nn.Module)

def _run_load(fam, tiny):
    "A checkpoint folder saved from the tiny model loads back through the family: same logits."
    model, processor = tiny
    d = Path(tempfile.mkdtemp())
    model.save_pretrained(d)
    if hasattr(processor, 'save_pretrained'): processor.save_pretrained(d)
    loaded, proc2 = fam.load(d, dtype=torch.float32)
    assert family_of(d) is fam and family_of(loaded) is fam
    inputs = fam.collate([fam.render(conversations(fam, processor)['ask'], processor)], pack=False)
    with torch.no_grad(): assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5)

def _run_sft(fam, tiny):
    "SFT's family-taking steps: synthetic grounding data planned into a row, a fresh tiny model made trainable, one packed row backpropagated."
    from vlmkit.sft import SKIPPED, RowCollator, SFTConfig, load_for_training, prepare_model, rows_of, synthetic_grounding
    model, processor = tiny
    convs = synthetic_grounding(fam, processor, 3)
    rows, bad = rows_of(convs, fam, processor, budget=10_000)
    assert bad == [] and len(rows) == 1 and sorted(rows.packs[0]) == [0, 1, 2]
    found, fresh, proc = load_for_training('tiny', fam.name)   # its own model: LoRA would change the shared one
    assert found is fam and type(fresh) is type(model)
    fresh = prepare_model(fresh, fam, SFTConfig(family=fam.name, lora_r=4), verbose=False)
    batch = RowCollator(fam, rows.samples[0])([rows[0]])
    assert batch.pop(SKIPPED) == []
    fresh(**batch).loss.backward()
    assert all(p.grad is not None for n, p in fresh.named_parameters() if 'lora_' in n)

def _run_pack_rows(fam, tiny):
    "Samples packed into rows by a token budget (`vlmkit.collation`): each row's batch runs; every sample is in one row."
    from vlmkit.collation import pack_rows_by_budget
    model, processor = tiny
    rendered = _batch(fam, processor)
    packing = pack_rows_by_budget(rendered, max(len(r) for r in rendered) + 1)
    assert sorted(i for row in packing.rows for i in row) == list(range(len(rendered))) and not packing.left_out
    fam.enable_packing(model)
    with torch.no_grad():
        for batch in packing.batches(fam): assert torch.isfinite(model(**batch).loss)

def _run_token_lengths(fam, tiny):
    "Token lengths of data rendered by the family (`vlmkit.data`): one per sample, equal to the rendered length."
    from vlmkit.data import token_lengths
    model, processor = tiny
    c = conversations(fam, processor)
    convs = [c['answered'], c['tool'], c['text']]
    tl = token_lengths(convs, fam, processor)
    assert tl.family == fam.name and tl.lengths.tolist() == [len(fam.render(x, processor, training=True)) for x in convs]
    assert tl.trained.tolist() == [fam.render(x, processor, training=True).n_trained for x in convs]

def _run_grounding(fam, tiny):
    "The family's grounding question rendered with an image; its oracle answer read back and scored a hit; one greedy evaluation record."
    from vlmkit.grounding import evaluate_grounding, first_box, grounding_conversation, score_answer
    from vlmkit.refcoco import Ref
    model, processor = tiny
    assert 'the cup' in fam.grounding_prompt('the cup')
    d = Path(tempfile.mkdtemp())
    noise_image(0, (60, 40)).save(d/'cup.png')
    ref = Ref('refcoco', 'val', 1, 2, 3, 4, 'cup.png', (60, 40), tuple(BOX), 'the cup', image=str(d/'cup.png'))
    r = fam.render(grounding_conversation(ref, fam), processor)
    resized = r.resized_sizes[0] if r.resized_sizes else None
    answer = format_boxes(convert_boxes([BOX], 'pixel', fam.syntax.space, (60, 40), resized), fam.syntax, labels='the cup')
    box, err = first_box(answer, fam.syntax, (60, 40), resized)
    assert err is None and max(abs(a - b) for a, b in zip(box, BOX)) <= 1.0, (answer, box, err)
    assert score_answer(ref, answer, fam, (60, 40), resized)['hit']
    rec, = evaluate_grounding(model, processor, [ref], family=fam, max_new_tokens=4, progress=False)
    assert rec['id'] == 'refcoco/val/2' and rec['family'] == fam.name and rec['text'] is not None and (rec['hit'] or rec['error'])

def _run_filter_results(fam, tiny):
    "Result records filtered by the family's name keep its records only (`vlmkit.grounding_viz`)."
    from vlmkit.grounding_viz import filter_results
    recs = [dict(id=f'refcoco/val/{i}', dataset='refcoco', split='val', family=f, iou=0.7, hit=True, error=None) for i, f in enumerate(FAMILIES)]
    assert [r['family'] for r in filter_results(recs, family=fam.name)] == [fam.name]

def _run_rewards(fam, tiny):
    "R-GRPO's box rewards read the family's own answer (its syntax and space) back to the gold box in pixels: IoU 1, a hit, the crop bonus."
    from vlmkit.rewards import crop_reward, iou_hit_reward, iou_reward, predicted_box
    model, processor = tiny
    c = conversations(fam, processor)
    r = c['rendered_ask']
    cols = dict(solution=[BOX], image_size=[r.image_sizes[0]], syntax=fam.name, resized_size=[r.resized_sizes[0] if r.resized_sizes else None])
    done = [f"<think>Let me look. <tool_call>Crop [4, 2, 44, 32]</tool_call><image></think><answer>{c['answer']}</answer>"]
    assert predicted_box(c['answer'], fam.name, r.image_sizes[0], cols['resized_size'][0]).tolist() == pytest.approx(BOX, abs=1)
    assert iou_reward(None, done, **cols) == [pytest.approx(1.0, abs=0.1)] and iou_hit_reward(None, done, **cols) == [1.0]
    assert 0 < crop_reward(None, done, **cols)[0] < 0.5  # a crop around the box (the tool wants 28 pixels a side): part of the bonus
def _run_rollout(fam, tiny):
    "A scripted model's rollout with a crop call is the training render of its trajectory (`vlmkit.rollout`); greedy without calls is `generate`."
    from vlmkit.rollout import rollout, scripted_family, tool_trajectory
    model, processor = tiny
    ask = conversations(fam, processor)['ask']
    traj = tool_trajectory(ask, ['Look. <tool_call>Crop [2, 2, 40, 34]</tool_call>', 'A cup.'])
    sft = fam.render(traj, processor, training=True)
    r, = rollout(model, processor, [ask], group_size=1, family=scripted_family(fam, [sft.input_ids]), max_new_tokens=64)
    assert torch.equal(r.rendered.input_ids, sft.input_ids) and torch.equal(r.rendered.labels, sft.labels)
    assert (r.tool_calls, r.tool_errors, r.finished) == (1, 0, True)
    g, = rollout(model, processor, [ask], group_size=1, family=fam, do_sample=False, max_new_tokens=4)
    ids = fam.generate(model, processor, [ask], max_new_tokens=4)[0]
    assert g.tool_calls == 0 and g.rendered.labels[g.rendered.labels != -100].tolist() == ids[:g.n_generated].tolist()

def _run_grpo(fam, tiny):
    "Grounding prompts (in memory and as a prompt file) and the trainer's per-token log-probs: packed = the model's own log-softmax; the reference = the adapter-disabled model."
    from vlmkit.data import read_conversations
    from vlmkit.grpo import grounding_prompts, reference_logprobs, sample_logprobs, write_grounding_prompts
    from vlmkit.lora import apply_lora
    _, processor = tiny
    prompts = grounding_prompts(fam, processor, n=2)
    assert [p.meta['image_size'] for p in prompts] == [list(p.images[0].item.src.size) for p in prompts]
    with tempfile.TemporaryDirectory() as d:
        back, report = read_conversations(write_grounding_prompts(fam, d, n=2), require_answer=False)
        assert len(back) == 2 and not report.problems and back[0].meta['solution'] == prompts[0].meta['solution']
    answered = [Conversation([*p.turns, Turn('assistant', 'A cup.')]) for p in prompts]
    rendered = [fam.render(c, processor, training=True) for c in answered]
    model = fam.enable_packing(fam.tiny()[0].float().eval())
    own = []
    with torch.no_grad():
        for r in rendered:
            batch = fam.collate([r], pack=False)
            batch.pop('labels')
            logits = model(**batch).logits[0].float()
            y = r.labels[1:]
            own.append(torch.log_softmax(logits[:-1], -1)[y != -100].gather(-1, y[y != -100][:, None])[:, 0])
        packed = sample_logprobs(model, fam, rendered)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(packed, own)), (packed, own)
    pm = apply_lora(model, 'llm', r=4, verbose=False)
    for n, p in pm.named_parameters():
        if 'lora_B' in n: torch.nn.init.normal_(p, std=0.5)   # an adapter that changes the policy
    ref = reference_logprobs(pm, fam, rendered)
    with torch.no_grad(): moved = sample_logprobs(pm, fam, rendered)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ref, own))
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(moved, own))

def _run_chat(fam, tiny):
    "`vlmkit.chat`: a question about the test image; the reply's text is `Family.decoder`'s (= `generate`'s) decoded, streamed or not."
    from vlmkit.chat import chat, prepare
    model, processor = tiny
    image = noise_image(0, (60, 40))
    prep = prepare(model, processor, 'Where is the cup?', images=[image], max_new_tokens=4)
    assert prep.fam is fam and len(prep.rendered) == 1 and prep.rendered[0].image_sizes == [(60, 40)]
    reply = chat(model, processor, 'Where is the cup?', images=[image], max_new_tokens=4)
    streamed = chat(model, processor, 'Where is the cup?', images=[image], max_new_tokens=4, stream=True)
    assert ''.join(streamed) == reply.text and reply.image_size == (60, 40)
    ids = fam.decoder(model, processor, prep.rendered, 4).run().sequences[0]
    assert torch.equal(ids, fam.generate(model, processor, prep.rendered, max_new_tokens=4)[0])

def _run_tour(fam, tiny):
    "The tour's chain, short: data in R-GRPO's form (`crop_grounding`), SFT, evaluation (`tour_eval`), R-GRPO with the crop tool, evaluation, outputs."
    import json
    from vlmkit.tour import run_tour
    with tempfile.TemporaryDirectory() as d:
        r = run_tour(str(Path(d)/'out'), fam.name, verbose=False, sft_samples=4, sft_steps=2, grpo_prompts=2, grpo_steps=1,
                     group_size=2, prompts_per_step=1, max_new_tokens=24, refcoco_images=4)
        assert [p.name for p in r['paths']] == ['table.md', 'table.json', 'boxes.png', 'rewards.png', 'trajectory.png']
        assert all(p.is_file() and p.stat().st_size > 0 for p in r['paths'])
        table = json.loads((Path(d)/'out'/'table.json').read_text())
        assert table['settings']['family'] == fam.name
        assert table['rows'][-1]['dataset'] == 'macro average' and table['rows'][-1]['n'] == len(r['before']) == len(r['after'])
        assert {rec['family'] for rec in r['before'] + r['after']} == {fam.name}
        assert len(table['rewards']) == 1 and len(r['rollouts']) == 1 and len(r['rollouts'][0]) == 2   # one step: 1 prompt x 2 completions
        assert (Path(d)/'out'/'grpo'/'adapter_model.safetensors').is_file() and (Path(d)/'out'/'sft'/'config.json').is_file()

def _run_tools(fam, tiny):
    "`vlmkit.tools.named_tools`: 'crop' is the crop tool in the family's grounding space, 'crop:pixel' in pixels (as `default_tools` of those spaces)."
    from vlmkit.tools import default_tools, named_tools
    for spec, space in (('crop', fam.syntax.space), ('crop:pixel', 'pixel')):
        assert named_tools(spec, fam)['Crop'].description == default_tools(space)['Crop'].description

RUN = {
    'vlmkit.grounding_viz.filter_results': _run_filter_results,
    'Family.grounding_prompt': _run_grounding, 'vlmkit.grounding.grounding_conversation': _run_grounding,
    'vlmkit.grounding.first_box': _run_grounding, 'vlmkit.grounding.score_answer': _run_grounding,
    'vlmkit.grounding.evaluate_grounding': _run_grounding,
    'vlmkit.data.token_lengths': _run_token_lengths,
    'vlmkit.boxes.get_syntax': _run_boxes, 'vlmkit.boxes.parse_boxes': _run_boxes, 'vlmkit.boxes.format_boxes': _run_boxes,
    'vlmkit.boxes.format_points': _run_boxes,
    'Family.render': _run_render, 'Family.collate': _run_collate, 'Family.enable_packing': _run_collate,
    'Family.tiny': _run_tiny, 'vlmkit.family.family_of': _run_tiny, 'Family.load': _run_load,
    'Family.generation_kwargs': _run_generate, 'vlmkit.family.Family.generate': _run_generate,
    'vlmkit.family.Family.stop_ids': _run_stop_ids, 'vlmkit.collation.RowPacking.batches': _run_pack_rows,
    'vlmkit.sft.synthetic_grounding': _run_sft, 'vlmkit.sft.rows_of': _run_sft, 'vlmkit.sft.load_for_training': _run_sft,
    'vlmkit.sft.prepare_model': _run_sft,
    'vlmkit.rewards.iou_reward': _run_rewards, 'vlmkit.rewards.iou_hit_reward': _run_rewards,
    'vlmkit.rewards.crop_reward': _run_rewards, 'vlmkit.rewards.predicted_box': _run_rewards,
    'vlmkit.grpo.grounding_prompts': _run_grpo, 'vlmkit.grpo.write_grounding_prompts': _run_grpo,
    'vlmkit.grpo.sample_logprobs': _run_grpo, 'vlmkit.grpo.reference_logprobs': _run_grpo,
    'vlmkit.rollout.rollout': _run_rollout, 'vlmkit.rollout.scripted_family': _run_rollout,
    'vlmkit.tools.named_tools': _run_tools,
    'vlmkit.chat.chat': _run_chat, 'vlmkit.chat.prepare': _run_chat, 'vlmkit.family.Family.decoder': _run_chat,
    'vlmkit.tour.run_tour': _run_tour, 'vlmkit.tour.tour_eval': _run_tour, 'vlmkit.tour.crop_grounding': _run_tour,
}

@pytest.mark.parametrize('run', sorted(set(RUN.values()), key=lambda f: f.__name__), ids=lambda f: f.__name__[5:])
def test_every_family(fam, tiny, run): run(fam, tiny)

def test_hooks(fam, tiny): _run_hooks(fam, tiny)
