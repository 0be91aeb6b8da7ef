"""vlmkit.ovis.generation beyond the notebook: the full fixture sweep (each case alone, through the official
`model.generate` API, and all cases in one batch in two orders), the official two-phase algorithm re-implemented
by re-encoding (as the official code does) against vlmkit's single KV-cached loop on paths the fixtures never take
(eos or `</think>` inside the budget, rows ending at different steps), sampling, streaming and errors."""
import io, json, contextlib
import pytest, torch
from hypothesis import given, settings, strategies as st
from transformers import TextIteratorStreamer, TextStreamer
from vlmkit.testing import fixture, require_fixture, tiny_tokenizer, noise_image
from vlmkit.ovis.modeling import Ovis2_5, tiny_ovis25_config
from vlmkit.ovis.preprocessing import preprocess_inputs
from vlmkit.generation import FORCED, NO_TOKEN, IncrementalDecoder, stream_text
from vlmkit.ovis.generation import (EARLY_STOPPING_TEXT, IM_END_ID, PAD_ID, THINK_END_ID, BatchDecoder, batch_prompts,
                                    check_thinking_budget, early_stopping_ids, generate, split_thinking, stream_generate)

# ---------------------------------------------------------------------------------------------------- fixtures
def _case_names():
    p = fixture('ovis25/ovis25_cases.json')
    return [c['name'] for c in json.loads(p.read_text())['cases']] if p else ['(fixtures absent)']

@pytest.fixture(scope='module')
def official():
    "The fixture checkpoint loaded natively, the stored cases (official inputs, exact pixel values) and their json."
    ckpt = require_fixture('ovis25/ovis25_tiny')
    recs = torch.load(require_fixture('ovis25/ovis25_cases.pt'), weights_only=True)
    meta = {c['name']: c for c in json.loads(require_fixture('ovis25/ovis25_cases.json').read_text())['cases']}
    model = Ovis2_5.from_pretrained(ckpt, torch_dtype=torch.float32).eval()
    return model, recs, meta

def _inputs(rec):
    pv = None if rec['pixel_values_u8'] is None else rec['pixel_values_lut'][rec['pixel_values_u8'].long()]
    return rec['input_ids'], pv, rec['grid_thws']

def _first_mismatch(got, want, margins):
    got, want = got.tolist(), want.tolist()
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    m = float(margins[i]) if i < len(margins) else float('nan')
    return f"first mismatch at step {i} (official margin there {m:.2e}); got {got}, official {want}"

@pytest.mark.parametrize('name', _case_names())
def test_fixture_case_alone(official, name):
    "Each case alone, through the official API (`model.generate` delegates to vlmkit): budget and plain greedy ids exact."
    model, recs, meta = official
    rec, kw = recs['cases'][name], meta[name]['generate_kwargs_common']
    ids, pv, grid = _inputs(rec)
    assert early_stopping_ids(model.text_tokenizer) == meta[name]['generate_budget']['early_stopping_ids']
    budget = model.generate(ids, pixel_values=pv, grid_thws=grid, enable_thinking=True, enable_thinking_budget=True,
                            thinking_budget=meta[name]['generate_budget']['kwargs']['thinking_budget'], **kw)
    plain = model.generate(ids, pixel_values=pv, grid_thws=grid, enable_thinking=True, enable_thinking_budget=False, **kw)
    assert torch.equal(budget, rec['generate_budget_ids']), _first_mismatch(budget[0], rec['generate_budget_ids'][0], rec['generate_budget_margins'])
    assert torch.equal(plain, rec['generate_plain_ids']), _first_mismatch(plain[0], rec['generate_plain_ids'][0], rec['generate_plain_margins'])
    assert model.text_tokenizer.decode(budget[0]) == meta[name]['generate_budget']['text']

@pytest.mark.parametrize('order', ['stored', 'reversed'])
def test_fixture_all_cases_one_batch(official, order):
    "All cases in one batch (different prompt lengths, images, a text-only row): each row equals the official one-by-one run."
    model, recs, meta = official
    names = recs['case_order'][::-1] if order == 'reversed' else recs['case_order']
    ins = [_inputs(recs['cases'][n]) for n in names]
    pv = torch.cat([p for _, p, _ in ins if p is not None])
    grid = torch.cat([g for _, _, g in ins if g is not None])
    # a right-padded [B, L] batch with its mask: vlmkit re-aligns the rows itself
    L = max(ids.shape[1] for ids, _, _ in ins)
    batch = torch.full((len(ins), L), PAD_ID)
    mask = torch.zeros(len(ins), L, dtype=torch.long)
    for i, (ids, _, _) in enumerate(ins): batch[i, :ids.shape[1]], mask[i, :ids.shape[1]] = ids[0], 1
    out = generate(model, batch, pv, grid, attention_mask=mask, enable_thinking_budget=True, thinking_budget=8,
                   max_new_tokens=40, return_dict_in_generate=True)
    for i, n in enumerate(names):
        want = recs['cases'][n]['generate_budget_ids'][0]
        assert torch.equal(out.sequences[i], want), f"{n}: " + _first_mismatch(out.sequences[i], want, recs['cases'][n]['generate_budget_margins'])
        forced = meta[n]['generate_budget']['forced_stop_path']
        assert out.budget_steps[i] == (8 if forced else None)
        assert (out.kinds[i] == FORCED).sum() == (len(meta[n]['generate_budget']['early_stopping_ids']) if forced else 0)

def test_fixture_checkpoint_longer_budgets_equal_official_two_phase(official):
    "Past the fixtures' 40 tokens: per-row budgets in one batch equal the official re-encoding run of each row."
    model, recs, meta = official
    samples = [_inputs(recs['cases'][n]) for n in recs['case_order']]
    budgets = [16, 30, None, 5, 22, 16][:len(samples)] + [16] * max(0, len(samples) - 6)
    got = generate(model, **batch_prompts(samples), enable_thinking_budget=True, thinking_budget=budgets, max_new_tokens=64)
    stop = early_stopping_ids(model.text_tokenizer)
    for i, s in enumerate(samples):
        want = official_two_phase(model, *s, budgets[i], 64, IM_END_ID, PAD_ID, THINK_END_ID, stop)[0]
        assert torch.equal(got[i], want), f"row {i}: {got[i].tolist()} != {want.tolist()}"

def test_fixture_streaming_text(official):
    "Streaming pieces of the real tokenizer (multi-byte characters) add up to the official text of every row."
    model, recs, meta = official
    names = recs['case_order']
    ins = [_inputs(recs['cases'][n]) for n in names]
    texts = ['' for _ in names]
    for row, piece in stream_generate(model, **batch_prompts(ins), enable_thinking_budget=True, thinking_budget=8, max_new_tokens=40):
        texts[row] += piece
    assert texts == [meta[n]['generate_budget']['text'] for n in names]

# ------------------------------------------------------------------ the official algorithm, re-encoding, on a tiny model
def official_two_phase(model, ids, pv, grid, budget, max_new_tokens, eos_id, pad_id, think_end_id, stop_ids):
    """The official `Ovis2_5.generate` semantics for one row: phase 1 with transformers' `generate`; unless it holds
    eos, append the stop ids (only if it lacks `</think>`), re-encode everything and run phase 2 from scratch."""
    embeds = model.merge_multimodal(ids, pv, grid)
    kw = dict(do_sample=False, eos_token_id=eos_id, pad_token_id=pad_id)
    if budget is None:
        return model.llm.generate(inputs_embeds=embeds, attention_mask=ids.ne(pad_id), max_new_tokens=max_new_tokens, **kw)
    first = model.llm.generate(inputs_embeds=embeds, attention_mask=ids.ne(pad_id), max_new_tokens=budget, **kw)
    if eos_id in first[0].tolist(): return first
    appended = first if think_end_id in first[0].tolist() else torch.cat([first, torch.tensor([stop_ids], device=first.device)], -1)
    full = torch.cat([ids, appended], -1)
    embeds2 = torch.cat([embeds, model.merge_multimodal(appended, None, None)], 1)
    second = model.llm.generate(inputs_embeds=embeds2, attention_mask=full.ne(pad_id),
                                max_new_tokens=max_new_tokens - appended.shape[1], **kw)
    return torch.cat([appended, second], -1)

@pytest.fixture(scope='module')
def tiny():
    "A tiny native Ovis2.5 over the tiny byte-level tokenizer, with three prompts (one image, text, two images)."
    tok = tiny_tokenizer(image='<image>', video='<video>')
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=len(tok)))).eval()
    model.text_tokenizer = tok
    user = lambda *c: [{'role': 'user', 'content': list(c)}]
    im, tx = (lambda i: {'type': 'image', 'image': i}), (lambda t: {'type': 'text', 'text': t})
    msgs = [user(im(noise_image(0)), tx('What is in the picture?')), user(tx('Say hi.')),
            user(tx('Compare the two.'), im(noise_image(1, (40, 90))), im(noise_image(2)))]
    ins = [preprocess_inputs(tok, m, min_pixels=64*64, max_pixels=128*128, enable_thinking=True) for m in msgs]
    ids = dict(eos_id=tok.convert_tokens_to_ids('<|im_end|>'), pad_id=tok.pad_token_id,
               think_end_id=tok.convert_tokens_to_ids('</think>'), stop_ids=early_stopping_ids(tok, "\nTime is up.\n</think>\n\n"))
    return model, tok, ins, ids

def _batch(ins):
    b = batch_prompts(ins)
    return b['input_ids'], b['pixel_values'], b['grid_thws']

def _vlmkit_kw(ids, eos=None):
    return dict(eos_token_id=ids['eos_id'] if eos is None else eos, pad_token_id=ids['pad_id'],
                think_end_id=ids['think_end_id'], stop_ids=ids['stop_ids'])

def _swap_lm_head_rows(model, a, b):
    w = model.llm.lm_head.weight.data
    w[[a, b]] = w[[b, a]]

@pytest.mark.parametrize('scenario', ['forced', 'eos_in_phase_1', 'think_end_in_phase_1', 'eos_in_phase_2', 'no_budget_row'])
def test_batched_schedule_equals_official_two_phase(tiny, scenario):
    "Every official path, rows on different schedules in one batch, equal to the re-encoding two-phase run of each row."
    model, tok, ins, ids = tiny
    rows, pv, grid = _batch(ins)
    budgets, N = [3, 8, 5], 40
    if scenario == 'no_budget_row': budgets = [3, None, 5]
    free = generate(model, rows, pv, grid, max_new_tokens=N, **_vlmkit_kw(ids))   # no budget: what each row would say
    eos, swapped = ids['eos_id'], None
    if scenario == 'eos_in_phase_1': eos = int(free[1, 2])                        # row 1 ends inside its budget of 8
    if scenario == 'think_end_in_phase_1': swapped = (int(free[1, 4]), ids['think_end_id'])  # row 1 writes </think> itself
    if swapped: _swap_lm_head_rows(model, *swapped)
    try:
        if scenario == 'eos_in_phase_2':                                          # row 0 ends after its forced text
            forced = generate(model, rows, pv, grid, enable_thinking_budget=True, thinking_budget=budgets, max_new_tokens=N, **_vlmkit_kw(ids))
            start, seen = 3 + len(ids['stop_ids']), set(forced[0, :3].tolist()) | set(ids['stop_ids'])
            eos = next(int(t) for t in forced[0, start + 1:] if int(t) not in seen)
        got = generate(model, rows, pv, grid, enable_thinking_budget=True, thinking_budget=budgets, max_new_tokens=N,
                       return_dict_in_generate=True, **_vlmkit_kw(ids, eos))
        for i, (r, p, g) in enumerate(ins):
            want = official_two_phase(model, r, p, g, budgets[i], N, eos, ids['pad_id'], ids['think_end_id'], ids['stop_ids'])[0]
            assert ids['pad_id'] not in want.tolist(), "the official phase 2 would mask a generated pad id: pick another seed"
            n = int((got.kinds[i] != NO_TOKEN).sum())
            assert torch.equal(got.sequences[i, :n], want), f"row {i}: {got.sequences[i, :n].tolist()} != {want.tolist()}"
            assert (got.sequences[i, n:] == ids['pad_id']).all()
    finally:
        if swapped: _swap_lm_head_rows(model, *swapped)
    if scenario == 'eos_in_phase_1': assert got.budget_steps[1] is None and got.sequences[1, 2] == eos
    if scenario == 'think_end_in_phase_1': assert got.budget_steps[1] is None and not (got.kinds[1] == FORCED).any()
    if scenario == 'eos_in_phase_2': assert got.budget_steps[0] == 3
    if scenario == 'forced': assert got.budget_steps == budgets

def test_batched_equals_one_by_one_with_ends(tiny):
    "Rows that stop at different steps (an extra eos) and different budgets: the batch equals each row alone."
    model, tok, ins, ids = tiny
    rows, pv, grid = _batch(ins)
    free = generate(model, rows, pv, grid, max_new_tokens=30, **_vlmkit_kw(ids))
    eos = [ids['eos_id'], int(free[2, 12])]
    for budgets in ([0, 4, 9], [None, 2, None]):
        got = generate(model, rows, pv, grid, enable_thinking_budget=True, thinking_budget=budgets, max_new_tokens=40, **_vlmkit_kw(ids, eos))
        for i, (r, p, g) in enumerate(ins):
            alone = generate(model, r, p, g, enable_thinking_budget=True, thinking_budget=[budgets[i]], max_new_tokens=40, **_vlmkit_kw(ids, eos))
            assert torch.equal(got[i, :alone.shape[1]], alone[0]) and (got[i, alone.shape[1]:] == ids['pad_id']).all()

def test_max_new_tokens_zero_and_plain_lm(tiny):
    model, tok, ins, ids = tiny
    rows, pv, grid = _batch(ins)
    assert generate(model, rows, pv, grid, max_new_tokens=0, **_vlmkit_kw(ids)).shape == (3, 0)
    # a bare causal LM (no merge_multimodal) takes text-only rows
    text = generate(model.llm, rows[1], max_new_tokens=6, **_vlmkit_kw(ids))
    assert torch.equal(text, generate(model, rows[1], max_new_tokens=6, **_vlmkit_kw(ids)))
    with pytest.raises(ValueError, match="no merge_multimodal"): generate(model.llm, rows[0], pv[:24], grid[:1], max_new_tokens=2)

# ---------------------------------------------------------------------------------------------------- sampling
def test_sampling(tiny):
    model, tok, ins, ids = tiny
    rows, pv, grid = _batch(ins)
    kw = dict(enable_thinking_budget=True, thinking_budget=[3, 8, 5], max_new_tokens=40, **_vlmkit_kw(ids))
    run = lambda seed, **k: generate(model, rows, pv, grid, do_sample=True, generator=torch.Generator().manual_seed(seed), **kw, **k)
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for out in (a, c):  # the budget holds whatever is sampled
        for i, bud in enumerate([3, 8, 5]):
            assert out[i, bud:bud + len(ids['stop_ids'])].tolist() == ids['stop_ids']
    greedy = generate(model, rows, pv, grid, **kw)
    assert torch.equal(run(2, top_k=1), greedy)
    assert torch.equal(run(3, temperature=1e-4, top_k=None), greedy)

# ---------------------------------------------------------------------------------------------------- streaming
def test_transformers_streamers_one_row(tiny):
    model, tok, ins, ids = tiny
    rows, _, _ = _batch(ins)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = generate(model, rows[1], max_new_tokens=10, streamer=TextStreamer(tok, skip_prompt=True), **_vlmkit_kw(ids))
    assert buf.getvalue().rstrip('\n') == tok.decode(out[0]).rstrip('\n')
    it = TextIteratorStreamer(tok, skip_prompt=True)
    out = generate(model, rows[1], max_new_tokens=10, streamer=it, **_vlmkit_kw(ids))
    assert ''.join(it) == tok.decode(out[0])
    with pytest.raises(ValueError, match="batch size 1"):
        generate(model, rows[1:], max_new_tokens=2, streamer=TextStreamer(tok), **_vlmkit_kw(ids))

def test_stream_text_and_result_agree(tiny):
    model, tok, ins, ids = tiny
    rows, pv, grid = _batch(ins)
    dec = BatchDecoder(model, rows, pv, grid, enable_thinking_budget=True, thinking_budget=[3, 8, None], max_new_tokens=40, **_vlmkit_kw(ids))
    texts = ['', '', '']
    for row, piece in stream_text(dec, tok, skip_special_tokens=True): texts[row] += piece
    res = dec.result()
    assert texts == [tok.decode(s, skip_special_tokens=True) for s in res.sequences]
    assert res.budget_steps == [3, 8, None]

@pytest.fixture(scope='module')
def qwen_tokenizer():
    from vlmkit.ovis.preprocessing import load_ovis_tokenizer
    return load_ovis_tokenizer(require_fixture('ovis25/ovis25_tiny'))

@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 151668), max_size=40))
def test_incremental_decoder_pieces_add_up(qwen_tokenizer, token_ids):
    "Any token sequence (half characters, newlines, special tokens): the pieces add up to the decoded text."
    dec = IncrementalDecoder(qwen_tokenizer)
    pieces = [dec.push(t) for t in token_ids] + [dec.flush()]
    assert ''.join(pieces) == qwen_tokenizer.decode(token_ids)

# ---------------------------------------------------------------------------------------------------- thinking text
_plain = st.text(st.characters(blacklist_characters='<>'), max_size=30)

@given(_plain, _plain)
def test_split_thinking_roundtrip(thinking, answer):
    assert split_thinking(f"<think>\n{thinking}\n</think>\n\n{answer}") == (thinking.strip(), answer.strip())
    assert split_thinking(f"<think>\n{thinking}{EARLY_STOPPING_TEXT}{answer}", drop_early_stopping=True) == (thinking.strip(), answer.strip())
    assert split_thinking(answer) == ('', answer.strip())

# ---------------------------------------------------------------------------------------------------- errors
def test_clear_errors(tiny):
    model, tok, ins, ids = tiny
    rows, pv, grid = _batch(ins)
    with pytest.raises(ValueError, match=r"max_new_tokens=33 must exceed thinking_budget \+ 25 = 33 \(thinking_budget=8\)"):
        check_thinking_budget(33, 8)
    with pytest.raises(ValueError, match=r"max_new_tokens=30 must exceed thinking_budget \+ 25 = 32 \(thinking_budget=7\)"):
        generate(model, rows, pv, grid, enable_thinking_budget=True, thinking_budget=[1, 7, 2], max_new_tokens=30, **_vlmkit_kw(ids))
    # the rule is not checked when the budget is off (official: the budget needs enable_thinking and enable_thinking_budget)
    generate(model, rows[1], enable_thinking=False, enable_thinking_budget=True, thinking_budget=8, max_new_tokens=3, **_vlmkit_kw(ids))
    with pytest.raises(ValueError, match="needs a thinking_budget"):
        generate(model, rows[1], enable_thinking_budget=True, thinking_budget=None, max_new_tokens=60, **_vlmkit_kw(ids))
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        generate(model, rows[:2], enable_thinking_budget=True, thinking_budget=[1, 2, 3], max_new_tokens=60, **_vlmkit_kw(ids))
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int"):
        generate(model, rows[1], max_new_tokens=-1, **_vlmkit_kw(ids))
    with pytest.raises(ValueError, match="has no text_tokenizer: pass stop_ids"):
        generate(model.llm, rows[1], enable_thinking_budget=True, thinking_budget=2, max_new_tokens=60)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\), input_ids \(1, 4\)"):
        generate(model, torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3), max_new_tokens=1)
    with pytest.raises(ValueError, match="input_ids hold"):  # images that do not match the placeholders: the model says so
        generate(model, rows[0], pv, grid, max_new_tokens=1, **_vlmkit_kw(ids))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(model, rows[1], do_sample=True, temperature=0.0, max_new_tokens=1)

# ---------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batched_equals_one_by_one_and_official(tiny):
    "On the GPU (inputs left on the CPU, as the official examples make them): batch == each row alone == official recipe."
    model, tok, ins, ids = tiny
    gpu = Ovis2_5(model.config).cuda().eval()
    gpu.load_state_dict(model.state_dict()); gpu.text_tokenizer = tok
    rows, pv, grid = _batch(ins)
    budgets = [3, 8, None]
    got = generate(gpu, rows, pv, grid, enable_thinking_budget=True, thinking_budget=budgets, max_new_tokens=40,
                   return_dict_in_generate=True, **_vlmkit_kw(ids))
    assert got.sequences.is_cuda and got.budget_steps == budgets
    with torch.no_grad():
        for i, (r, p, g) in enumerate(ins):
            cuda = lambda t: None if t is None else t.cuda()
            alone = generate(gpu, r, p, g, enable_thinking_budget=True, thinking_budget=[budgets[i]], max_new_tokens=40, **_vlmkit_kw(ids))
            want = official_two_phase(gpu, cuda(r), cuda(p), cuda(g), budgets[i], 40, ids['eos_id'], ids['pad_id'], ids['think_end_id'], ids['stop_ids'])
            assert torch.equal(got.sequences[i], alone[0]) and torch.equal(alone, want)
    sampled = generate(gpu, rows, pv, grid, do_sample=True, generator=torch.Generator('cuda').manual_seed(0), enable_thinking_budget=True,
                       thinking_budget=budgets, max_new_tokens=40, **_vlmkit_kw(ids))
    assert sampled[0, 3:3 + len(ids['stop_ids'])].tolist() == ids['stop_ids']
    half = Ovis2_5(model.config).to('cuda', torch.bfloat16).eval()
    half.load_state_dict(model.state_dict())
    out = generate(half, rows, pv, grid, enable_thinking_budget=True, thinking_budget=budgets, max_new_tokens=40,
                   return_dict_in_generate=True, **_vlmkit_kw(ids))
    assert out.sequences.shape == (3, 40) and out.budget_steps == budgets
