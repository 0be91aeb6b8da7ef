"""Native Ovis2.5 against the official outputs (every fixture case), packing, checkpoint layouts, training paths."""
import json, tempfile
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file
from vlmkit.testing import require_fixture
from vlmkit.attention import varlen_attention, cu_seqlens_from_lengths
from vlmkit.packing import unpack, pack_by_budget
from vlmkit.ovis.modeling import (Ovis2_5, Siglip2NavitConfig, NavitVisionTransformer, block_order,
                                  window_partition, pack_samples, random_sample, tiny_ovis25_config,
                                  VISUAL_ATOM_ID, INDICATOR_IDS)

@pytest.fixture(scope='module')
def official():
    folder = require_fixture('ovis25/ovis25_tiny')
    cases = torch.load(require_fixture('ovis25/ovis25_cases.pt'), weights_only=True)
    model = Ovis2_5.from_pretrained(folder, torch_dtype=torch.float32).eval()  # the official call's spelling
    return folder, model, cases

def _inputs(case):
    pv = None if case['pixel_values_u8'] is None else case['pixel_values_lut'][case['pixel_values_u8'].long()]
    return case['input_ids'], pv, case['grid_thws']

def test_loads_fp32_with_tokenizer(official):
    _, model, _ = official
    assert model.dtype == torch.float32 and model.text_tokenizer is not None
    assert model.llm.lm_head.weight.data_ptr() != model.llm.model.embed_tokens.weight.data_ptr()  # public fixture: untied

def test_every_case_matches_the_official_outputs(official):
    "Each case the fixture set holds (public or hidden, whatever their names): ViT, visual tokens, embeddings, logits."
    _, model, cases = official
    assert cases['case_order']
    for name in cases['case_order']:
        case = cases['cases'][name]
        ids, pv, grid = _inputs(case)
        with torch.no_grad():
            if pv is not None:
                vt = model.visual_tokenizer
                for key, got in [('vit_embeddings', vt.vit.vision_model.embeddings(pv, grid)), ('vit_features', vt.encode(pv, grid)),
                                 ('visual_tokens', vt(pv, grid))]:
                    assert (got - case[key]).abs().max() <= 1e-5, (name, key)
            assert (model.merge_multimodal(ids, pv, grid)[0] - case['inputs_embeds']).abs().max() <= 1e-5, name
            logits = model(input_ids=ids, attention_mask=case['attention_mask'], pixel_values=pv, grid_thws=grid).logits[0]
        assert (logits[-1] - case['logits_last']).abs().max() <= 1e-4, name
        assert (logits[:, case['logits_vocab_ids']] - case['logits_at_vocab_ids']).abs().max() <= 1e-4, name
        assert torch.equal(logits.argmax(-1), case['logits_argmax']), name
        assert (logits.max(-1).values - case['logits_max']).abs().max() <= 1e-4, name
        assert (logits.double().logsumexp(-1) - case['logits_logsumexp_f64']).abs().max() <= 1e-4, name

def test_inputs_embeds_forward_equals_ids_and_pixels_on_every_case(official):
    "PEFT-style `inputs_embeds` (merged once outside) give exactly the logits of input_ids + pixel_values."
    _, model, cases = official
    for name in cases['case_order']:
        ids, pv, grid = _inputs(cases['cases'][name])
        with torch.no_grad():
            ref = model(input_ids=ids, pixel_values=pv, grid_thws=grid).logits
            got = model(inputs_embeds=model.merge_multimodal(ids, pv, grid)).logits
        assert torch.equal(got, ref), name
        assert (got[0, -1] - cases['cases'][name]['logits_last']).abs().max() <= 1e-4, name

def test_packed_fixture_cases_equal_one_by_one(official):
    "4 samples with different image sizes (plus a text-only one) in one padding-free forward, fixture checkpoint."
    _, model, cases = official
    names = [n for n in cases['case_order'] if cases['cases'][n]['grid_thws'] is not None][:4]
    names += [n for n in cases['case_order'] if cases['cases'][n]['grid_thws'] is None][:1]
    samples = [_inputs(cases['cases'][n]) for n in names]
    grids = {tuple(map(tuple, s[2].tolist())) for s in samples if s[2] is not None}
    assert len(grids) >= 4
    batch = pack_samples(samples)
    with torch.no_grad():
        packed = unpack(model(input_ids=batch['input_ids'], position_ids=batch['position_ids'], pixel_values=batch['pixel_values'],
                              grid_thws=batch['grid_thws']).logits, batch['seq_lens'])
    for name, logits in zip(names, packed):
        case = cases['cases'][name]
        assert (logits[-1] - case['logits_last']).abs().max() <= 1e-4, name
        assert (logits[:, case['logits_vocab_ids']] - case['logits_at_vocab_ids']).abs().max() <= 1e-4, name

def test_save_round_trip_official_layout(official):
    folder, model, _ = official
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        ref, new = load_file(folder/'model.safetensors'), load_file(Path(d)/'model.safetensors')
        assert set(ref) == set(new)
        assert all(torch.equal(new[k].to(ref[k].dtype), ref[k]) for k in ref)
        cfg, ref_cfg = json.loads((Path(d)/'config.json').read_text()), json.loads((folder/'config.json').read_text())
        assert cfg['model_type'] == 'ovis2_5' and cfg['architectures'] == ['Ovis2_5']
        for k in ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'image_size', 'window_size',
                  'hidden_stride', 'patch_size', 'fullatt_block_indexes', 'preserve_original_pe', 'use_rope'):
            assert cfg['vit_config'][k] == ref_cfg['vit_config'][k], k
        for k in ('hidden_size', 'num_hidden_layers', 'num_key_value_heads', 'head_dim', 'vocab_size'):
            assert cfg['llm_config'][k] == ref_cfg['llm_config'][k], k
        assert cfg['visual_vocab_size'] == ref_cfg['visual_vocab_size']
        back = Ovis2_5.from_pretrained(d, dtype=torch.float32)
        assert back.text_tokenizer is not None
        for (n, a), b in zip(model.state_dict().items(), back.state_dict().values()): assert torch.equal(a, b), n

def test_tied_layout_hidden_fixture_shape():
    "2B layout: no lm_head key, tied to embed_tokens; a ViT of width 32 and image size 96 (config driven)."
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(tie_word_embeddings=True, vocab_size=500), vit=dict(hidden_size=32, image_size=96))).eval()
    g = torch.Generator().manual_seed(0)
    s = random_sample((6, 8), 10, vocab=500, generator=g)
    with torch.no_grad(): ref = model(**s).logits
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        assert 'llm.lm_head.weight' not in load_file(Path(d)/'model.safetensors')
        cfg = json.loads((Path(d)/'config.json').read_text())
        cfg['llm_config']['tie_word_embeddings'] = False   # the key's absence decides, not the flag
        (Path(d)/'config.json').write_text(json.dumps(cfg))
        back = Ovis2_5.from_pretrained(d, dtype=torch.float32).eval()
    assert back.llm.lm_head.weight.data_ptr() == back.llm.model.embed_tokens.weight.data_ptr()
    assert back.visual_tokenizer.vit.vision_model.embeddings.position_embedding.weight.shape == (36, 32)
    with torch.no_grad(): assert torch.allclose(back(**s).logits, ref, atol=1e-6)

def test_atom_count_mismatch_is_an_error():
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300))).eval()
    s = random_sample((4, 4), 6, vocab=300)
    bad = torch.cat([s['input_ids'], torch.tensor([[VISUAL_ATOM_ID]])], 1)
    with pytest.raises(ValueError, match='5 visual atoms'): model(input_ids=bad, pixel_values=s['pixel_values'], grid_thws=s['grid_thws'])
    with pytest.raises(ValueError, match='give 0 visual tokens'): model(input_ids=s['input_ids'])
    with pytest.raises(ValueError, match=r'pixel_values has 15 patch rows but grid_thws \[\[1, 4, 4\]\] gives 16'):
        model(input_ids=s['input_ids'], pixel_values=s['pixel_values'][:-1], grid_thws=s['grid_thws'])

def test_indicator_embeddings_come_from_vte():
    "Indicator tokens take their rows of `vte` (counted from its end), every other token its LLM or visual embedding."
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300))).eval()
    s = random_sample((4, 4), 6, vocab=300)
    ids = s['input_ids']
    with torch.no_grad(): embeds = model.merge_multimodal(ids, s['pixel_values'], s['grid_thws'])
    V, n = model.config.visual_vocab_size, len(INDICATOR_IDS)
    for pos in range(ids.shape[1]):
        i = int(ids[0, pos])
        if i in INDICATOR_IDS: assert torch.equal(embeds[0, pos], model.vte.weight[V - n + INDICATOR_IDS[0] - i])
        elif i >= 0: assert torch.equal(embeds[0, pos], model.get_wte().weight[i])

def test_pack_samples_labels_and_errors():
    g = torch.Generator().manual_seed(0)
    a, b = random_sample((4, 4), 6, vocab=50, generator=g), random_sample(None, 5, vocab=50, generator=g)
    a['labels'], b['labels'] = a['input_ids'].clone(), b['input_ids'].clone()
    batch = pack_samples([a, b])
    assert batch['input_ids'].shape == (1, 17) and batch['position_ids'][0].tolist() == list(range(12)) + list(range(5))
    assert batch['labels'][0, 0] == -100 and batch['labels'][0, 12] == -100 and batch['labels'][0, 13] == b['labels'][0, 1]
    assert batch['grid_thws'].tolist() == [[1, 4, 4]] and batch['seq_lens'] == [12, 5]
    with pytest.raises(ValueError, match='give all or none'): pack_samples([a, dict(b, labels=None)])
    with pytest.raises(ValueError, match='labels has 3 entries'): pack_samples([dict(a, labels=torch.zeros(3))])
    with pytest.raises(TypeError, match='a sample is a dict'): pack_samples([[1, 2]])
    assert [len(x) for x in unpack(torch.zeros(1, 17, 2), batch['seq_lens'])] == [12, 5]

@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=12), st.integers(1, 60))
def test_pack_by_budget_properties(lengths, budget):
    packs = pack_by_budget(lengths, budget)
    assert [i for p in packs for i in p] == list(range(len(lengths)))
    assert all(len(p) == 1 or sum(lengths[i] for i in p) <= budget for p in packs)

@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3), st.integers(1, 4))
def test_window_partition_is_a_permutation_of_whole_windows(grids, window):
    grid = torch.tensor([[t, 2 * h, 2 * w] for t, h, w in grids])
    perm, lengths = window_partition(grid, window, 2)
    n = int(grid.prod(-1).sum())
    assert sorted(perm.tolist()) == list(range(n)) and sum(lengths) == n
    assert all(0 < l <= 4 * window * window and l % 4 == 0 for l in lengths)
    # frames stay contiguous: the windows of frame k come after those of frame k-1
    frame_of = torch.repeat_interleave(torch.arange(int(grid[:, 0].sum())), torch.cat([torch.full((t,), h * w) for t, h, w in grid.tolist()]))
    assert torch.equal(frame_of[perm], frame_of)

def test_block_order_matches_official_reshape():
    x = torch.arange(6 * 8 * 3).view(6, 8, 3)
    official = x.reshape(3, 2, 4, 2, 3).permute(0, 2, 1, 3, 4).reshape(-1, 3)
    assert torch.equal(block_order(x, 2), official)

def test_vit_packs_images_independently():
    torch.manual_seed(0)
    vit = NavitVisionTransformer(Siglip2NavitConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    image_size=64, fullatt_block_indexes="1")).eval()
    grids = [torch.tensor([[1, 6, 10]]), torch.tensor([[2, 4, 4]]), torch.tensor([[1, 12, 2]])]
    pvs = [torch.randn(int(g.prod()), 768) for g in grids]
    with torch.no_grad():
        alone = torch.cat([vit(p, g) for p, g in zip(pvs, grids)])
        packed = vit(torch.cat(pvs), torch.cat(grids))
    assert torch.allclose(alone, packed, atol=1e-5)

def test_gradient_checkpointing_same_grads_with_windows():
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300), vit=dict(num_hidden_layers=3, fullatt_block_indexes="2")))
    g = torch.Generator().manual_seed(0)
    samples = [random_sample(hw, n, vocab=300, generator=g) for hw, n in [((8, 14), 7), ((4, 6), 5)]]
    for s in samples: s['labels'] = s['input_ids'].clamp(min=0)
    batch = {k: v for k, v in pack_samples(samples).items() if k != 'seq_lens'}
    model.train()
    def grads():
        model.zero_grad(); model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    ref = grads()
    getattr(model, 'activation_checkpointing_enable', model.gradient_checkpointing_enable)()
    ckpt = grads()
    assert ref.keys() == ckpt.keys() and any(n.startswith('visual_tokenizer.vit') for n in ref)
    for n in ref: assert torch.allclose(ref[n], ckpt[n], atol=1e-5), n

def test_varlen_llm_never_builds_a_mask(monkeypatch):
    "The packed LLM forward gets no [L, L] mask: the registered mask function returns None."
    import transformers.masking_utils as mu
    calls = []
    real = mu.sdpa_mask
    monkeypatch.setattr(mu, 'sdpa_mask', lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300))).eval()
    g = torch.Generator().manual_seed(0)
    batch = pack_samples([random_sample((4, 4), 6, vocab=300, generator=g), random_sample(None, 9, vocab=300, generator=g)])
    with torch.no_grad(): model(input_ids=batch['input_ids'], position_ids=batch['position_ids'], pixel_values=batch['pixel_values'], grid_thws=batch['grid_thws'])
    assert calls == []

def _labelled_batch(seed:int) -> dict:
    "A packed batch of an image sample and a text-only one, every text token labelled (visual positions -100)."
    g = torch.Generator().manual_seed(seed)
    samples = [random_sample(hw, n, vocab=300, generator=g, labelled=True) for hw, n in [((4, 6), 9), (None, 7)]]
    return {k: v for k, v in pack_samples(samples).items() if k != 'seq_lens'}

def test_lean_loss_equals_transformers_loss():
    "vlmkit's loss (labelled rows only, chunked) equals transformers' loss from full logits, with and without num_items_in_batch."
    from vlmkit.loss import labelled_lm_loss
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300))).eval()
    batch = _labelled_batch(seed=0)
    with torch.no_grad():
        lean, full = model(**batch), model(**batch, return_logits=True)
        assert lean.logits is None and full.logits is not None
        assert torch.allclose(lean.loss, full.loss, atol=1e-6)
        n = int((batch['labels'][:, 1:] != -100).sum())
        assert torch.allclose(model(**batch, num_items_in_batch=2 * n).loss, full.loss / 2, atol=1e-6)
        h = torch.randn(1, 5, 64)
        assert torch.allclose(labelled_lm_loss(h, torch.tensor([[1, 2, 3, 4, 5]]), model.llm.lm_head, chunk=2),
                              torch.nn.functional.cross_entropy(model.llm.lm_head(h[0, :-1]), torch.tensor([2, 3, 4, 5])), atol=1e-6)

def test_lean_loss_gradients_equal_transformers_loss_gradients():
    "Training through the lean loss moves every parameter exactly as transformers' full-logits loss does."
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300))).train()
    batch = _labelled_batch(seed=1)
    grads = []
    for full in (False, True):
        model.zero_grad()
        model(**batch, return_logits=full).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]: assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n

def test_visual_chunks_change_nothing_but_memory():
    torch.manual_seed(0)
    model = Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300))).train()
    s = random_sample((10, 12), 8, vocab=300, generator=torch.Generator().manual_seed(0), labelled=True)
    def loss_and_grads(chunk):
        model.visual_chunk = chunk; model.zero_grad()
        loss = model(**s).loss; loss.backward()
        return loss.detach(), model.vte.weight.grad.clone(), model.visual_tokenizer.head[0].weight.grad.clone()
    ref, small = loss_and_grads(None), loss_and_grads(7)
    for a, b in zip(ref, small): assert torch.allclose(a, b, atol=1e-6)

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=5), st.sampled_from([(4, 4), (4, 2), (6, 1)]), st.booleans(),
       st.sampled_from([None, 1, 3]), st.booleans())
def test_varlen_attention_equals_per_sequence_sdpa(lengths, heads, causal, window, long_path):
    "The attention every packed path relies on (vlmkit.attention), on CPU: both the mask path and the per-sequence path."
    from vlmkit.attention import sdpa_varlen
    if sum(lengths) == 0: lengths = lengths + [1]
    window = window if causal else None
    hq, hk = heads
    g = torch.Generator().manual_seed(sum(lengths))
    T = sum(lengths)
    q, k, v = torch.randn(T, hq, 8, generator=g), torch.randn(T, hk, 8, generator=g), torch.randn(T, hk, 8, generator=g)
    cu = cu_seqlens_from_lengths(lengths)
    got = sdpa_varlen(q, k, v, cu, causal, None, window, max_mask_tokens=0 if long_path else 4096) if long_path else \
          varlen_attention(q, k, v, cu, causal=causal, window=window)
    ref, s = [], 0
    for n in lengths:
        if n:
            i = torch.arange(n)
            mask = torch.ones(n, n, dtype=torch.bool)
            if causal: mask &= i[None] <= i[:, None]
            if window: mask &= i[None] > i[:, None] - window
            ref.append(torch.nn.functional.scaled_dot_product_attention(q[s:s+n].transpose(0, 1), k[s:s+n].transpose(0, 1), v[s:s+n].transpose(0, 1),
                                                                        attn_mask=mask, enable_gqa=True).transpose(0, 1))
        s += n
    assert torch.allclose(got, torch.cat(ref), atol=1e-5)

def _tiny(seed=0, vocab=300):
    torch.manual_seed(seed)
    return Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=vocab))).eval()

def _two_prompts(vocab=300):
    "Two left-padded prompts with images of different sizes: rows, padded ids and mask, images."
    from vlmkit.generation import left_pad
    g = torch.Generator().manual_seed(1)
    a, b = random_sample((8, 8), 12, vocab=vocab, generator=g), random_sample((4, 8), 5, vocab=vocab, generator=g)
    rows = [a['input_ids'][0], b['input_ids'][0]]
    images = dict(pixel_values=torch.cat([a['pixel_values'], b['pixel_values']]), grid_thws=torch.cat([a['grid_thws'], b['grid_thws']]))
    ids, mask = left_pad(rows, 0)
    return rows, ids, mask, images

def test_inputs_embeds_forward_and_its_errors():
    model = _tiny()
    s = random_sample((8, 6), 9, vocab=300, generator=torch.Generator().manual_seed(0), labelled=True)
    with torch.no_grad():
        embeds = model.merge_multimodal(s['input_ids'], s['pixel_values'], s['grid_thws'])
        assert torch.equal(model(inputs_embeds=embeds).logits, model(**{k: v for k, v in s.items() if k != 'labels'}).logits)
        # the lean loss path takes embeddings too
        assert torch.allclose(model(inputs_embeds=embeds, labels=s['labels']).loss, model(**s).loss, atol=1e-6)
    with pytest.raises(ValueError, match='not both'): model(input_ids=s['input_ids'], inputs_embeds=embeds)
    with pytest.raises(ValueError, match='merge_multimodal'): model(inputs_embeds=embeds, pixel_values=s['pixel_values'], grid_thws=s['grid_thws'])
    with pytest.raises(ValueError, match='needs input_ids'): model(attention_mask=torch.ones(1, 3))

def test_embedding_accessors_are_the_llms():
    model = _tiny()
    assert model.get_input_embeddings() is model.llm.model.embed_tokens and model.get_output_embeddings() is model.llm.lm_head
    new_in, new_out = torch.nn.Embedding(300, 64), torch.nn.Linear(64, 300, bias=False)
    model.set_input_embeddings(new_in); model.set_output_embeddings(new_out)
    assert model.llm.model.embed_tokens is new_in and model.get_input_embeddings() is new_in and model.llm.lm_head is new_out

@pytest.mark.parametrize('cache_name', ['past_key_values', 'cache'])
def test_cache_and_positions_pass_through_to_the_llm(cache_name):
    "Prompt with use_cache, then one token with the cache and its position: the full forward's last logits."
    from transformers import DynamicCache
    model = _tiny()
    s = random_sample((4, 8), 7, vocab=300, generator=torch.Generator().manual_seed(2))
    ids, L = s['input_ids'], s['input_ids'].shape[1]
    with torch.no_grad():
        full = model(**s).logits
        cache = DynamicCache(config=model.llm.config)
        model(input_ids=ids[:, :-1], pixel_values=s['pixel_values'], grid_thws=s['grid_thws'], use_cache=True, **{cache_name: cache})
        assert cache.get_seq_length() == L - 1
        step = model(input_ids=ids[:, -1:], position_ids=torch.tensor([[L - 1]]), use_cache=True, **{cache_name: cache}).logits
    assert cache.get_seq_length() == L
    assert torch.allclose(step[0, -1], full[0, -1], atol=1e-5)

def test_prepare_inputs_first_step_carries_the_images_later_steps_only_new_tokens():
    from transformers import DynamicCache
    model = _tiny()
    rows, ids, mask, images = _two_prompts()
    cache = DynamicCache(config=model.llm.config)
    first = model.prepare_inputs_for_generation(ids, past_key_values=cache, attention_mask=mask, **images)
    assert torch.equal(first['input_ids'], ids) and first['pixel_values'] is images['pixel_values'] and first['grid_thws'] is images['grid_thws']
    assert torch.equal(first['position_ids'], (mask.cumsum(-1) - 1).clamp(min=0)) and first['past_key_values'] is cache
    with torch.no_grad(): nxt = model(**first).logits[:, -1].argmax(-1, keepdim=True)
    assert cache.get_seq_length() == ids.shape[1]
    ids2, mask2 = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    later = model.prepare_inputs_for_generation(ids2, past_key_values=cache, attention_mask=mask2, **images)
    assert torch.equal(later['input_ids'], nxt) and 'pixel_values' not in later and 'grid_thws' not in later
    assert later['position_ids'].tolist() == [[len(rows[0])], [len(rows[1])]] and torch.equal(later['attention_mask'], mask2)
    # transformers 5.2x names the cache `cache` and says how many tokens are new
    named = model.prepare_inputs_for_generation(ids2, cache=cache, attention_mask=mask2, next_sequence_length=1, is_first_iteration=False, **images)
    assert torch.equal(named['input_ids'], nxt) and named['past_key_values'] is cache
    # without a cache every step is a full forward, images included
    again = model.prepare_inputs_for_generation(ids2, attention_mask=mask2, use_cache=False, **images)
    assert torch.equal(again['input_ids'], ids2) and again['pixel_values'] is images['pixel_values'] and again['use_cache'] is False

def test_prepare_inputs_with_a_prompt_given_as_embeddings():
    from transformers import DynamicCache
    model = _tiny()
    _, ids, mask, images = _two_prompts()
    with torch.no_grad(): embeds = model.merge_multimodal(ids, **images)
    cache = DynamicCache(config=model.llm.config)
    first = model.prepare_inputs_for_generation(ids[:, :0], past_key_values=cache, attention_mask=mask, inputs_embeds=embeds)
    assert first['inputs_embeds'] is embeds and 'input_ids' not in first and 'pixel_values' not in first
    with torch.no_grad(): nxt = model(**first).logits[:, -1].argmax(-1, keepdim=True)
    # generated ids only: the prompt lives in the cache, not in input_ids
    later = model.prepare_inputs_for_generation(nxt, past_key_values=cache, attention_mask=torch.cat([mask, torch.ones_like(nxt)], 1),
                                                inputs_embeds=embeds)
    assert torch.equal(later['input_ids'], nxt) and 'inputs_embeds' not in later

def _greedy_steps(model, ids, mask, n, **images):
    "A transformers-style greedy loop over prepare_inputs_for_generation and forward."
    from transformers import DynamicCache
    cache, start = DynamicCache(config=model.config.get_text_config()), ids.shape[1]
    for _ in range(n):
        with torch.no_grad():
            logits = model(**model.prepare_inputs_for_generation(ids, past_key_values=cache, attention_mask=mask, **images)).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids[:, start:]

def test_step_loops_and_transformers_generate_equal_vlmkit_generate():
    "A hand loop, GenerationMixin.generate (cached, uncached, prompt as embeddings) and vlmkit's batched generate agree."
    from transformers import GenerationMixin
    from vlmkit.ovis.generation import generate
    model = _tiny()
    rows, ids, mask, images = _two_prompts()
    ours = generate(model, rows, **images, enable_thinking=False, max_new_tokens=6, eos_token_id=[], pad_token_id=0)
    assert ours.shape == (2, 6)
    assert torch.equal(_greedy_steps(model, ids, mask, 6, **images), ours)
    hf = lambda **kw: GenerationMixin.generate(model, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, **kw)
    assert torch.equal(hf(input_ids=ids, **images)[:, ids.shape[1]:], ours)
    assert torch.equal(hf(input_ids=ids, **images, use_cache=False)[:, ids.shape[1]:], ours)
    with torch.no_grad(): embeds = model.merge_multimodal(ids, **images)
    assert torch.equal(hf(inputs_embeds=embeds), ours)
    # the official model.generate is still vlmkit's, and takes the prompt under either name
    assert torch.equal(model.generate(input_ids=rows, **images, enable_thinking=False, max_new_tokens=6, eos_token_id=[], pad_token_id=0), ours)
    with pytest.raises(ValueError, match='not both'): model.generate(rows, input_ids=rows, **images)
