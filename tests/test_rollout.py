"""`vlmkit.rollout` against the training render, for every family: a scripted model (the tiny model with its logits
overridden by a script of ids) writes a known trajectory, and the rollout must be its SFT render token for token:
the research crop-tool trajectories (`../shared/fixtures`, skipped where absent) and trajectories on synthetic images
(good crops, refused boxes, calls that do not parse, several calls). Then the real tiny model: old log-probs are the
model's own, tool-inserted tokens get exactly zero gradient, seeds reproduce, limits hold."""
import torch
import torch.nn.functional as F
from vlmkit.conversation import Conversation, Turn
from vlmkit.family import FAMILIES, reuse_visuals
from vlmkit.rollout import rollout, scripted_family, tool_trajectory
from vlmkit.testing import noise_image
from vlmkit.tools import RESEARCH_CROP_SYSTEM, default_tools

def _prompt(conv:Conversation) -> Conversation:
    "The conversation before its last assistant turn: what a rollout starts from."
    last = max(i for i, t in enumerate(conv.turns) if t.role == 'assistant')
    return Conversation(conv.turns[:last], conv.system)

def _check_reproduces(fam, processor, trajectories, group_size=2, tools=None, **kw):
    "One rollout of every trajectory's prompt, scripted by the trajectories' training renders: each row is its render."
    prompts = [_prompt(c) for c in trajectories]
    sft = [fam.render(c, processor, training=True) for c in trajectories]
    out = rollout(None or kw.pop('model'), processor, prompts, group_size=group_size, tools=tools,
                  family=scripted_family(fam, [s.input_ids for s in sft]), max_new_tokens=kw.pop('max_new_tokens', 512), **kw)
    assert len(out) == len(prompts) * group_size
    for r in out:
        s, n_prompt = sft[r.prompt_index], len(fam.render(prompts[r.prompt_index], processor))
        assert torch.equal(r.rendered.input_ids, s.input_ids), (fam.name, r.prompt_index, r.text)
        expected = s.labels.clone(); expected[:n_prompt] = -100        # earlier assistant turns are part of the prompt
        assert torch.equal(r.rendered.labels, expected), (fam.name, r.prompt_index)
        assert r.rendered.spans == s.spans and r.rendered.image_sizes == s.image_sizes
        assert r.rendered.visual.keys() == s.visual.keys() and all(torch.equal(v, s.visual[k]) for k, v in r.rendered.visual.items())
        assert all(torch.equal(v, s.row[k]) for k, v in r.rendered.row.items())
        assert type(r.rendered) is type(s) and all(torch.equal(getattr(r.rendered, k), getattr(s, k)) for k in ('positions',) if hasattr(s, k))
        assert r.finished and r.retokenized == 0
        assert r.tool_calls == sum(p.turn == len(trajectories[r.prompt_index].turns) - 1 for p in trajectories[r.prompt_index].tool_calls)
    return out

def test_fixture_trajectories_reproduce_the_sft_render(fam, tiny):
    from test_golden import _trajectories, _with_pixels     # the research crop-tool data, skipped where absent
    model, processor = tiny
    # A third of the 15 trajectories a family (every third, so each family rolls out one final-format record and a
    # several-call one, and the three families all 15): each is some 260 decode steps of the tiny model on CPU.
    # test_golden renders all 15 for every family.
    k = list(FAMILIES).index(fam.name)
    trajectories = [_with_pixels(c, i) for i, c in enumerate(_trajectories())][k::len(FAMILIES)]
    batches = []        # a script is found by the ids so far: trajectories whose prompts render alike go to different batches
    with reuse_visuals():   # the fixture images preprocessed once for the test's renders and the rollouts' (their results are not in question)
        for c in trajectories:
            ids = fam.render(_prompt(c), processor).input_ids.tolist()
            b = next((b for b in batches if ids not in b[0]), None)
            if b is None: batches.append(b := ([], []))
            b[0].append(ids); b[1].append(c)
        out = [r for _, batch in batches for r in _check_reproduces(fam, processor, batch, group_size=1, model=model,
                                                                    tools=default_tools(min_side=1), max_new_tokens=4096)]
    assert len(out) == len(trajectories)
    assert sum(r.tool_calls for r in out) > len(out) and max(r.tool_calls for r in out) > 1

def _synthetic(seed:int=0) -> list[Conversation]:
    "Prompts on synthetic images answered with a good crop, two crops, an inverted box, a call that does not parse, an unknown tool, no call."
    def ask(i, q): return Conversation([Turn('user', [noise_image(seed + i, (200, 160)), q])], system=RESEARCH_CROP_SYSTEM)
    scripts = [['Let me look. <tool_call>Crop [10, 20, 90, 100]</tool_call>', 'A square.'],
               ['<tool_call>Crop [0, 0, 100, 80]</tool_call>', 'And the other half: <tool_call>Crop [100, 80, 200, 160]</tool_call>', 'Two.'],
               ['<tool_call>Crop [90, 20, 10, 100]</tool_call>', 'No box.'],
               ['<tool_call>Crop [1, 2]</tool_call>', 'Hmm.'],
               ['<tool_call>Zoom [1, 2, 3, 4]</tool_call>', 'Oops.'],
               ['<think>\nNothing to crop.\n</think>\n<answer>noise</answer>']]
    return [tool_trajectory(ask(i, f'Question {i}: what is there?'), s) for i, s in enumerate(scripts)]

def test_synthetic_trajectories_reproduce_the_sft_render(fam, tiny):
    model, processor = tiny
    trajectories = _synthetic()
    out = _check_reproduces(fam, processor, trajectories, group_size=2, model=model, generator=torch.Generator().manual_seed(0))
    by_prompt = {r.prompt_index: r for r in out}
    assert [(by_prompt[i].tool_calls, by_prompt[i].tool_errors) for i in range(6)] == [(1, 0), (2, 0), (1, 1), (1, 1), (1, 1), (0, 0)]
    assert by_prompt[0].text == 'Let me look. <tool_call>Crop [10, 20, 90, 100]</tool_call><image>A square.'
    assert by_prompt[2].text.startswith('<tool_call>Crop [90, 20, 10, 100]</tool_call><tool_response>Crop failed: the box')
    assert [r.prompt_index for r in out] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]     # prompt-major

def test_tool_inserted_tokens_get_zero_gradient(fam, tiny):
    "Labels mark the model's tokens only: the loss's gradient at every position predicting a tool-inserted token is exactly zero."
    model, processor = tiny
    traj = _synthetic()[:3]
    out = _check_reproduces(fam, processor, traj, group_size=1, model=model)
    for r in out:
        batch = fam.collate([r.rendered], pack=False)
        labels = batch.pop('labels')[0]
        logits = model(**batch).logits[0].detach().requires_grad_()
        F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction='sum').backward()
        inserted = torch.zeros(len(labels), dtype=torch.bool)
        for s in r.rendered.spans[1:]: inserted[s.start:s.end] = True                 # the crops
        n_prompt = len(fam.render(_prompt(traj[r.prompt_index]), processor))
        inserted[n_prompt:] |= labels[n_prompt:] == -100                              # crops, error text, the closing newline
        assert inserted.any() and (labels[inserted] == -100).all()
        grad_of = logits.grad[:-1].abs().sum(-1)                                      # row t predicts token t + 1
        assert (grad_of[inserted[1:]] == 0).all() and (grad_of[~inserted[1:] & (labels[1:] != -100)] > 0).all()

def test_old_logprobs_are_the_models(fam, tiny):
    "Sampled with temperature: each labelled token's old log-prob is log_softmax(logits / T) of the model on the finished trajectory."
    model, processor = tiny
    prompt = Conversation([Turn('user', [noise_image(3, (64, 48)), 'Describe.'])])
    out = rollout(model, processor, [prompt], group_size=3, max_new_tokens=10, temperature=0.7, generator=torch.Generator().manual_seed(0))
    for r in out:
        batch = fam.collate([r.rendered], pack=False)
        labels = batch.pop('labels')[0]
        with torch.no_grad(): logp = torch.log_softmax(model(**batch).logits[0].float() / 0.7, -1)
        at = (labels != -100).nonzero()[:, 0]
        assert len(at) == r.n_generated > 0
        mine = logp[at - 1].gather(-1, labels[at, None])[:, 0]
        assert torch.allclose(mine, r.old_logprobs[at], atol=1e-4), (mine, r.old_logprobs[at])
        assert (r.old_logprobs[labels == -100] == 0).all() and r.old_logprobs.dtype == torch.float32
    assert any(r.retokenized for r in out)      # a random tiny model samples bytes that are no text: kept as sampled all the same

def test_greedy_without_tools_is_generate(fam, tiny):
    model, processor = tiny
    prompts = [Conversation([Turn('user', [noise_image(4, (64, 48)), 'What is it?'])]), Conversation([Turn('user', 'Say hi.')])]
    out = rollout(model, processor, prompts, group_size=1, do_sample=False, max_new_tokens=6)
    ids = fam.generate(model, processor, prompts, max_new_tokens=6)
    for r, row in zip(out, ids):
        assert r.tool_calls == 0
        assert r.rendered.labels[r.rendered.labels != -100].tolist() == row[:r.n_generated].tolist()

def test_seeds_reproduce_and_differ(fam, tiny):
    model, processor = tiny
    prompt = Conversation([Turn('user', 'Say something.')])
    run = lambda seed: [r.rendered.input_ids.tolist() for r in rollout(model, processor, [prompt], group_size=4, max_new_tokens=8,
                                                                       generator=torch.Generator().manual_seed(seed))]
    a = run(0)
    assert a == run(0) and a != run(1) and len(set(map(tuple, a))) > 1     # same seed: same rows; rows of a group differ

def test_limits(fam, tiny):
    model, processor = tiny
    traj = _synthetic()[1]                                   # two calls
    script = scripted_family(fam, [fam.render(traj, processor, training=True).input_ids])
    one, = rollout(model, processor, [_prompt(traj)], group_size=1, family=script, max_tool_calls=1)
    assert (one.tool_calls, one.finished, len(one.conversation.pending_calls)) == (1, False, 1)
    assert one.text.endswith('</tool_call>')
    short, = rollout(model, processor, [_prompt(traj)], group_size=1, family=script, max_new_tokens=7)
    assert (short.n_generated, short.finished, short.tool_calls) == (7, False, 0)
    assert int((short.rendered.labels != -100).sum()) == 7   # the closing <|im_end|> the render adds is not the model's

def test_sampled_bytes_that_are_no_text_stay_as_sampled(fam, tiny):
    "A segment whose tokens the family would tokenize otherwise (a lone byte that is no UTF-8) is kept as sampled, before a crop too."
    model, processor = tiny
    tok = getattr(processor, 'tokenizer', processor)
    lone = next(i for i in range(len(tok)) if tok.decode([i]) == '\ufffd')        # one byte, decoded as U+FFFD (3 bytes re-encoded)
    traj = tool_trajectory(_prompt(_synthetic()[0]), ['A\ufffdB <tool_call>Crop [10, 20, 90, 100]</tool_call>', 'C.'])
    sft = fam.render(traj, processor, training=True)
    at = next(i for i in range(len(sft)) if sft.labels[i] != -100 and tok.decode(sft.input_ids[i:i + 3]) == '\ufffd')
    script = torch.cat([sft.input_ids[:at], torch.tensor([lone]), sft.input_ids[at + 3:]])
    r, = rollout(model, processor, [_prompt(traj)], group_size=1, family=scripted_family(fam, [script]), max_new_tokens=200)
    assert torch.equal(r.rendered.input_ids, script) and r.retokenized == 1 and (r.tool_calls, r.tool_errors, r.finished) == (1, 0, True)
    assert [(s.start, s.end) for s in r.rendered.spans] == \
           [(s.start - 2 * (s.start > at), s.end - 2 * (s.start > at)) for s in sft.spans]
    assert torch.equal(r.rendered.labels != -100, torch.cat([sft.labels[:at] != -100, torch.tensor([True]), sft.labels[at + 3:] != -100]))
    fam.enable_packing(model)
    with torch.no_grad():                       # the packed row (per-sample positions the splice kept) reads as the padded batch
        packed, padded = fam.collate([r.rendered], pack=True), fam.collate([r.rendered], pack=False)
        packed.pop('labels'); padded.pop('labels')
        assert (model(**packed).logits[0] - model(**padded).logits[0]).abs().max() < 1e-4

def test_static_cache_rollouts_reproduce_the_sft_render(fam, tiny):
    "The engine's static KV cache (reused between rounds of different sizes) gives the same trajectories, tool rounds included."
    model, processor = tiny
    out = _check_reproduces(fam, processor, _synthetic()[:3], group_size=2, model=model, cache='static')
    assert [r.tool_calls for r in out] == [1, 1, 2, 2, 1, 1] and all(r.tool_seconds > 0 for r in out)

def test_rollouts_go_on_from_the_cache_in_bf16(fam):
    """A bf16 model (a GPU run's dtype; built and run under a bf16 default dtype too) goes on from its KV cache after a call:
    one whole prefill a row, the crop in place, and the first token after the crop the one a whole prefill picks, with its
    log-prob within bf16 rounding."""
    from vlmkit.rollout import ForcedText
    old = torch.get_default_dtype()
    for default in (torch.float32, torch.bfloat16):
        torch.set_default_dtype(default)
        try:
            model, processor = fam.tiny()
            model.to(torch.bfloat16)
            call = getattr(processor, 'tokenizer', processor)('<tool_call>Crop [8, 8, 100, 80]</tool_call>', add_special_tokens=False)['input_ids']
            prompt = Conversation([Turn('user', [noise_image(4, (128, 96)), 'Where is it?'])])
            run = lambda reuse: rollout(model, processor, [prompt], group_size=2, do_sample=False, max_new_tokens=32, max_tool_calls=1,
                                        logits_processor=[ForcedText(call, 2)], reuse_cache=reuse)
            kept, again = run(True), run(False)
        finally: torch.set_default_dtype(old)
        for k, a in zip(kept, again):
            assert (k.tool_calls, k.tool_errors, k.prefills, a.prefills) == (1, 0, 1, 2), (fam.name, default)
            assert k.rendered.spans == a.rendered.spans and len(k.rendered.spans) == 2      # the image and its crop, in the same place
            after = k.rendered.spans[-1].end + int((k.rendered.labels[k.rendered.spans[-1].end:] != -100).nonzero()[0])
            assert torch.equal(k.rendered.input_ids[:after + 1], a.rendered.input_ids[:after + 1]), (fam.name, default)
            assert abs(float(k.old_logprobs[after] - a.old_logprobs[after])) < 0.05, (fam.name, default, k.old_logprobs[after], a.old_logprobs[after])
