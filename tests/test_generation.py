"""vlmkit.generation beyond the notebook: greedy and seeded sampled output equal to transformers' `generate` for
InternVL3.5 and Qwen2.5-VL (left-padded batches of prompts with different images and lengths, fp32 and bf16),
per-row stop sets and thinking budgets on those models against transformers run row by row, every input form
of a batch, streaming of every row, native Ovis2.5 through the same engine, and the engine's clear errors."""
import contextlib, io, re
from pathlib import Path
import pytest, torch
from transformers import TextIteratorStreamer, TextStreamer
import vlmkit.generation as engine
from vlmkit.generation import (FORCED, NO_TOKEN, ROPE_INDEX_HOOKS, BatchDecoder, GenerationHooks, batch_inputs, generate,
                               prefill_ids, stream_generate, stream_text)
from vlmkit.testing import noise_image, tiny_tokenizer
from vlmkit.internvl.tiny import tiny_internvl
from vlmkit.qwen.tiny import tiny_qwen25vl

def user(*content): return [{'role': 'user', 'content': list(content)}]
IMAGE = {'type': 'image'}
def text(t): return {'type': 'text', 'text': t}

# four prompts: different lengths, one or two images of different sizes, one text only
CONVERSATIONS = [(user(IMAGE, text('What is in the picture?')), [noise_image(0)]),
                 (user(text('Say hi.')), []),
                 (user(text('Compare:'), IMAGE, text('and'), IMAGE), [noise_image(1, (40, 90)), noise_image(2)]),
                 (user(text('A longer question about nothing at all, so that this row is the longest?'), IMAGE), [noise_image(3, (70, 50))])]

def build(family:str, dtype=torch.float32, token_types:bool=True):
    """A tiny model with an output head of its own (tiny InternVL ties it to the embeddings and would only repeat its
    last token), its four samples and the engine hooks it needs."""
    vlm = (tiny_internvl if family == 'internvl3_5' else tiny_qwen25vl)(seed=2)
    torch.manual_seed(2)
    vlm.model.lm_head.weight = torch.nn.Parameter(torch.randn_like(vlm.model.lm_head.weight))
    vlm.model.to(dtype)
    samples = [vlm.inputs(m, ims, add_generation_prompt=True) for m, ims in CONVERSATIONS]
    hooks = GenerationHooks()
    if family == 'qwen2_5_vl':
        hooks = ROPE_INDEX_HOOKS
        if token_types:  # what Qwen's processor returns: 1 on image tokens
            samples = [{**s, 'mm_token_type_ids': (s['input_ids'] == vlm.model.config.image_token_id).long()} for s in samples]
    return vlm, samples, hooks

@pytest.fixture(scope='module', params=['internvl3_5', 'qwen2_5_vl'])
def fp32(request):
    return build(request.param)

def transformers_new_tokens(model, inputs, **kw):
    return model.generate(**inputs, do_sample=False, **kw)[:, inputs['input_ids'].shape[1]:]

# ---------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('family', ['internvl3_5', 'qwen2_5_vl'])
def test_greedy_equals_transformers_generate(family, dtype):
    "A left-padded batch of four prompts: the engine's greedy ids equal transformers' `generate`, token for token."
    vlm, samples, hooks = build(family, dtype)
    batch = batch_inputs(samples, vlm.tokenizer.pad_token_id)
    assert len(set(batch['attention_mask'].sum(1).tolist())) == 4  # four prompt lengths: real left padding
    ours = generate(vlm.model, **batch, max_new_tokens=30, hooks=hooks)
    theirs = transformers_new_tokens(vlm.model, batch, max_new_tokens=30)
    assert torch.equal(ours, theirs), f"{family} {dtype}:\n{ours}\n{theirs}"
    assert len({tuple(r) for r in ours.tolist()}) == 4  # the rows say different things: the check has teeth

def test_qwen_without_token_types_follows_transformers():
    "Without `mm_token_type_ids` transformers gives Qwen2.5-VL text positions; the engine does the same."
    vlm, samples, hooks = build('qwen2_5_vl', token_types=False)
    batch = batch_inputs(samples, vlm.tokenizer.pad_token_id)
    assert torch.equal(generate(vlm.model, **batch, max_new_tokens=12, hooks=hooks), transformers_new_tokens(vlm.model, batch, max_new_tokens=12))

def test_qwen_processor_batch_left_or_right_padded():
    "A batch straight from Qwen's own processor (`mm_token_type_ids` included): transformers' ids, whichever side it pads."
    from vlmkit.qwen.processing import tiny_qwen
    model, proc = tiny_qwen()
    texts = [proc.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in CONVERSATIONS]
    images = [im for _, ims in CONVERSATIONS for im in ims]
    proc.tokenizer.padding_side = 'left'
    left = proc(text=texts, images=images, return_tensors='pt', padding=True)
    assert 'mm_token_type_ids' in left
    ours = generate(model, **left, max_new_tokens=12, hooks=ROPE_INDEX_HOOKS)
    assert torch.equal(ours, transformers_new_tokens(model, left, max_new_tokens=12))
    proc.tokenizer.padding_side = 'right'
    right = proc(text=texts, images=images, return_tensors='pt', padding=True)
    assert not torch.equal(right['input_ids'], left['input_ids'])
    assert torch.equal(generate(model, **right, max_new_tokens=12, hooks=ROPE_INDEX_HOOKS), ours)

def test_eos_ends_rows_like_transformers(fp32):
    "A stop id that ends some rows early (others run to the end): same ids and same pad filling as transformers."
    vlm, samples, hooks = fp32
    batch = batch_inputs(samples, vlm.tokenizer.pad_token_id)
    free = generate(vlm.model, **batch, max_new_tokens=20, hooks=hooks)
    eos = int(free[0, 5])
    ours = generate(vlm.model, **batch, max_new_tokens=20, eos_token_id=eos, hooks=hooks)
    theirs = transformers_new_tokens(vlm.model, batch, max_new_tokens=20, eos_token_id=eos)
    assert torch.equal(ours, theirs)
    assert (ours[0, 6:] == vlm.tokenizer.pad_token_id).all()

@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
def test_seeded_sampling_equals_transformers(dtype):
    "Sampling from float32 scores with transformers' warpers: under the same seed, the same ids as transformers' sampling."
    for family in ('internvl3_5', 'qwen2_5_vl'):
        vlm, samples, hooks = build(family, dtype)
        batch = batch_inputs(samples, vlm.tokenizer.pad_token_id)
        for kw in (dict(), dict(temperature=0.7, top_k=20, top_p=0.9)):
            torch.manual_seed(5); ours = generate(vlm.model, **batch, max_new_tokens=16, do_sample=True, hooks=hooks, **kw)
            torch.manual_seed(5); theirs = vlm.model.generate(**batch, max_new_tokens=16, do_sample=True, **kw)
            assert torch.equal(ours, theirs[:, batch['input_ids'].shape[1]:]), f"{family} {dtype} {kw}"

def test_sampling_generator_and_limits(fp32):
    vlm, samples, hooks = fp32
    batch = batch_inputs(samples, vlm.tokenizer.pad_token_id)
    run = lambda seed, **k: generate(vlm.model, **batch, max_new_tokens=12, hooks=hooks, do_sample=True,
                                     generator=torch.Generator().manual_seed(seed), **k)
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(vlm.model, **batch, max_new_tokens=12, hooks=hooks)
    assert torch.equal(run(2, top_k=1), greedy) and torch.equal(run(3, temperature=1e-4, top_k=None), greedy)

# ---------------------------------------------------------------------------------------------------- batch forms
def test_every_batch_form_gives_the_same_ids(fp32):
    "A list of rows, a left-padded batch, a right-padded batch with its mask, a batch without mask (pad ids): same ids."
    vlm, samples, hooks = fp32
    pad = vlm.tokenizer.pad_token_id
    left = batch_inputs(samples, pad)
    want = generate(vlm.model, **left, max_new_tokens=10, hooks=hooks)
    rows = [s['input_ids'][0] for s in samples]
    extra = {k: v for k, v in left.items() if k not in ('input_ids', 'attention_mask', 'mm_token_type_ids')}
    as_rows = dict(input_ids=rows, **extra)
    if 'mm_token_type_ids' in left: as_rows['mm_token_type_ids'] = [s['mm_token_type_ids'][0] for s in samples]
    L = left['input_ids'].shape[1]
    right = {k: torch.stack([torch.nn.functional.pad(v, (0, L - len(v)), value=pad if k == 'input_ids' else 0)
                             for v in ([s[k][0] for s in samples])]) for k in ('input_ids', 'attention_mask', 'mm_token_type_ids')
             if k in left}
    no_mask = {k: v for k, v in left.items() if k != 'attention_mask'}
    for form in (as_rows, {**right, **extra}, no_mask):
        assert torch.equal(generate(vlm.model, **form, max_new_tokens=10, hooks=hooks), want)
    for i, s in enumerate(samples):  # and each row alone
        alone = generate(vlm.model, **s, max_new_tokens=10, hooks=hooks)
        assert torch.equal(alone[0], want[i])

# ---------------------------------------------------------------------------------------------------- per-row stops
def test_per_row_stop_sets(fp32):
    "Each row stops on its own set: the batch equals transformers' `generate` of each row alone with that row's eos."
    vlm, samples, hooks = fp32
    batch = batch_inputs(samples, vlm.tokenizer.pad_token_id)
    free = generate(vlm.model, **batch, max_new_tokens=24, hooks=hooks)
    eos = vlm.tokenizer.eos_token_id
    stops = [[eos, int(free[0, 3])], eos, [int(free[2, 9]), int(free[2, 10])], [eos]]
    got = generate(vlm.model, **batch, max_new_tokens=24, eos_token_id=stops, hooks=hooks, return_dict_in_generate=True)
    lengths = [int((k != NO_TOKEN).sum()) for k in got.kinds]
    assert lengths[0] <= 4 and lengths[2] <= 10 and max(lengths) == 24
    for i, s in enumerate(samples):
        want = transformers_new_tokens(vlm.model, s, max_new_tokens=24, eos_token_id=stops[i])[0]
        assert torch.equal(got.sequences[i, :lengths[i]], want), f"row {i}"
        assert (got.sequences[i, lengths[i]:] == vlm.tokenizer.pad_token_id).all()

def test_per_row_max_new_tokens(fp32):
    vlm, samples, hooks = fp32
    batch = batch_inputs(samples, vlm.tokenizer.pad_token_id)
    full = generate(vlm.model, **batch, max_new_tokens=12, hooks=hooks)
    got = generate(vlm.model, **batch, max_new_tokens=[3, 12, 0, 7], hooks=hooks, return_dict_in_generate=True)
    assert [int((k != NO_TOKEN).sum()) for k in got.kinds] == [3, 12, 0, 7]
    for i, n in enumerate([3, 12, 0, 7]): assert torch.equal(got.sequences[i, :n], full[i, :n])

# ---------------------------------------------------------------------------------------------------- per-row budgets
def two_phase(vlm, sample, budget, max_new_tokens, eos, forced, think_end):
    """The thinking-budget recipe with transformers alone, for one row: generate `budget` tokens; unless they hold eos
    or `</think>`, append the forced ids, encode everything again (images included) and generate the rest."""
    n = budget if budget is not None else max_new_tokens
    first = transformers_new_tokens(vlm.model, sample, max_new_tokens=n, eos_token_id=eos)[0] if n else torch.zeros(0, dtype=torch.long)
    if budget is None or eos in first.tolist(): return first
    prefix = first.tolist() + ([] if think_end in first.tolist() else forced)
    ids = torch.cat([sample['input_ids'], torch.tensor([prefix])], 1)
    again = {**sample, 'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    if 'mm_token_type_ids' in sample: again['mm_token_type_ids'] = torch.cat([sample['mm_token_type_ids'], torch.zeros(1, len(prefix), dtype=torch.long)], 1)
    rest = transformers_new_tokens(vlm.model, again, max_new_tokens=max_new_tokens - len(prefix), eos_token_id=eos)[0]
    return torch.tensor(prefix + rest.tolist())

def test_per_row_budget_equals_two_phase_transformers(fp32):
    "Rows with budgets 2, none, 5 and 0 in one batch: each row equals the re-encoding two-phase run with transformers."
    vlm, samples, hooks = fp32
    tok = vlm.tokenizer
    batch = batch_inputs(samples, tok.pad_token_id)
    forced = tok("\nTime is up.\n</think>\n\n", add_special_tokens=False).input_ids
    think_end, eos = tok.convert_tokens_to_ids('</think>'), tok.eos_token_id
    budgets, N = [2, None, 5, 0], 30
    got = generate(vlm.model, **batch, max_new_tokens=N, eos_token_id=eos, budget=budgets, forced_ids=forced,
                   thinking=True, think_end_id=think_end, hooks=hooks, return_dict_in_generate=True)
    assert got.budget_steps == budgets
    for i, s in enumerate(samples):
        want = two_phase(vlm, s, budgets[i], N, eos, forced, think_end)
        n = int((got.kinds[i] != NO_TOKEN).sum())
        assert torch.equal(got.sequences[i, :n], want), f"row {i}: {got.sequences[i, :n].tolist()} != {want.tolist()}"
        if budgets[i] is not None:
            assert got.sequences[i, budgets[i]:budgets[i] + len(forced)].tolist() == forced
            assert (got.kinds[i, budgets[i]:budgets[i] + len(forced)] == FORCED).all()

def test_budget_row_that_closes_its_thought_gets_nothing_forced(fp32):
    "A row whose `</think>` (here: a token it says anyway) comes within its budget: nothing forced, as the recipe says."
    vlm, samples, hooks = fp32
    tok = vlm.tokenizer
    free = generate(vlm.model, **samples[2], max_new_tokens=12, hooks=hooks)
    think_end = int(free[0, 2])
    forced = tok("\nTime is up.\n</think>\n\n", add_special_tokens=False).input_ids
    got = generate(vlm.model, **samples[2], max_new_tokens=12, budget=6, forced_ids=forced, thinking=True,
                   think_end_id=think_end, hooks=hooks, return_dict_in_generate=True)
    assert got.budget_steps == [None] and torch.equal(got.sequences, free) and not (got.kinds == FORCED).any()

# ---------------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize('skip', [False, True])
def test_streaming_every_row_adds_up_to_the_result(fp32, skip):
    vlm, samples, hooks = fp32
    tok = vlm.tokenizer
    batch = batch_inputs(samples, tok.pad_token_id)
    kw = dict(max_new_tokens=24, eos_token_id=[[tok.eos_token_id], [tok.eos_token_id], [tok.eos_token_id, 30], []],
              budget=[None, 3, None, None], forced_ids=tok("\nTime is up.\n</think>\n\n", add_special_tokens=False).input_ids,
              think_end_id=tok.convert_tokens_to_ids('</think>'), hooks=hooks)
    dec = BatchDecoder(vlm.model, **batch, **kw)
    texts, order = ['' for _ in samples], []
    for row, piece in stream_text(dec, tok, skip_special_tokens=skip):
        texts[row] += piece; order.append(row)
    res = dec.result()
    assert all(texts) and len(set(order[:8])) > 1  # every row streamed, rows interleaved
    assert texts == [tok.decode(s[k != NO_TOKEN], skip_special_tokens=skip) for s, k in zip(res.sequences, res.kinds)]
    assert torch.equal(res.sequences, generate(vlm.model, **batch, **kw))
    pieces = list(stream_generate(vlm.model, batch['input_ids'], tok, skip, **{k: v for k, v in batch.items() if k != 'input_ids'}, **kw))
    assert [''.join(p for r, p in pieces if r == i) for i in range(len(samples))] == texts

def test_transformers_streamers_one_row(fp32):
    vlm, samples, hooks = fp32
    tok = vlm.tokenizer
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = generate(vlm.model, **samples[0], max_new_tokens=10, hooks=hooks, streamer=TextStreamer(tok, skip_prompt=True))
    assert buf.getvalue().rstrip('\n') == tok.decode(out[0]).rstrip('\n')
    it = TextIteratorStreamer(tok)  # the prompt too, as from model.generate
    out = generate(vlm.model, **samples[1], max_new_tokens=10, hooks=hooks, streamer=it)
    assert ''.join(it) == tok.decode(torch.cat([samples[1]['input_ids'][0], out[0]]))
    with pytest.raises(ValueError, match="batch size 1"):
        generate(vlm.model, **batch_inputs(samples[:2], tok.pad_token_id), max_new_tokens=2, hooks=hooks, streamer=TextStreamer(tok))

# ---------------------------------------------------------------------------------------------------- Ovis through the engine
def test_native_ovis_generates_through_the_engine():
    "The engine's own `generate` with Ovis's hooks gives the ids of Ovis's official-signature `generate`."
    from vlmkit.ovis.modeling import Ovis2_5, tiny_ovis25_config
    from vlmkit.ovis.preprocessing import preprocess_inputs
    from vlmkit.ovis import generation as ovis
    tok = tiny_tokenizer(image='<image>', video='<video>')
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=len(tok)))).eval()
    ins = [preprocess_inputs(tok, m, min_pixels=64*64, max_pixels=128*128, enable_thinking=True)
           for m in [user({'type': 'image', 'image': noise_image(0)}, text('What is it?')), user(text('Say hi.'))]]
    b = ovis.batch_prompts(ins)
    eos, pad = tok.convert_tokens_to_ids('<|im_end|>'), tok.pad_token_id
    want = ovis.generate(model, **b, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad)
    got = generate(model, b['input_ids'], pixel_values=b['pixel_values'], grid_thws=b['grid_thws'], max_new_tokens=12,
                   eos_token_id=eos, pad_token_id=pad, hooks=ovis.OVIS_HOOKS)
    assert torch.equal(got, want)

# ---------------------------------------------------------------------------------------------------- results and errors
def test_result_shapes_and_errors(fp32):
    vlm, samples, hooks = fp32
    batch = batch_inputs(samples, vlm.tokenizer.pad_token_id)
    assert generate(vlm.model, **batch, max_new_tokens=0, hooks=hooks).shape == (4, 0)
    with pytest.raises(TypeError, match="max_new_token=5 is not a model input"):
        generate(vlm.model, **batch, max_new_token=5, hooks=hooks)
    with pytest.raises(ValueError, match="give max_new_tokens"):
        generate(vlm.model, **batch, hooks=hooks)
    with pytest.raises(ValueError, match="2 schedules for a batch of 4 rows"):
        generate(vlm.model, **batch, schedules=engine.row_schedules(2, 3), hooks=hooks)
    with pytest.raises(ValueError, match="max_new_tokens has 3 entries for a batch of 4"):
        generate(vlm.model, **batch, max_new_tokens=[1, 2, 3], hooks=hooks)
    with pytest.raises(ValueError, match="budget=2 needs forced_ids"):
        generate(vlm.model, **batch, max_new_tokens=5, budget=2, hooks=hooks)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 3\)"):
        generate(vlm.model, batch['input_ids'], batch['attention_mask'][:, :3], max_new_tokens=1, hooks=hooks)
    no_positions = GenerationHooks(prefill=lambda m, ids, mask, inputs: {k: v for k, v in prefill_ids(m, ids, mask, inputs).items() if k != 'position_ids'})
    with pytest.raises(ValueError, match="returned no position_ids"):
        generate(vlm.model, **batch, max_new_tokens=1, hooks=no_positions)

def test_engine_never_names_a_family():
    "The engine takes what differs as hooks: its source names no model family."
    src = Path(engine.__file__).read_text()
    assert not re.search(r'ovis|internvl|qwen', src, re.I)
