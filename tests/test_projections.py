"""Fused sibling projections (`vlmkit.projections`) in each family's models: fused, and computed as one product a set,
greedy rollouts with a crop (both rounds, the second going on from the KV cache) are those of the unfused model."""
import torch
from vlmkit.family import FAMILIES
from vlmkit.grpo import grounding_prompts, prompt_of
from vlmkit.projections import FusedPartLinear, fuse_sibling_weights, fused_products
from vlmkit.rollout import ForcedText, rollout

def test_family_rollouts_with_fused_projections_are_those_without():
    for name, fam in FAMILIES.items():
        torch.manual_seed(0)
        model, proc = fam.tiny()
        prompts = [prompt_of(c) for c in grounding_prompts(fam, proc, n=2, size=(96, 64))]
        call = getattr(proc, 'tokenizer', proc)('<tool_call>Crop [8, 8, 60, 50]</tool_call>', add_special_tokens=False)['input_ids']
        run = lambda: rollout(model, proc, prompts, group_size=2, family=fam, max_new_tokens=len(call) + 8, max_tool_calls=1,
                              do_sample=False, cache='static', logits_processor=[ForcedText(call, 2)])
        plain = run()
        decoder = fam.hooks.decoder(model)
        assert fuse_sibling_weights(model) >= 2 * decoder.config.get_text_config(decoder=True).num_hidden_layers, name
        with fused_products(): fused = run()
        assert sum(isinstance(m, FusedPartLinear) for m in decoder.modules()) > 0, name
        assert [r.tool_calls for r in fused] == [1, 1, 1, 1], name
        for a, b in zip(plain, fused):
            assert a.rendered.input_ids.tolist() == b.rendered.input_ids.tolist(), name
            assert (a.old_logprobs - b.old_logprobs).abs().max().item() < 1e-4, name

def test_compiled_lora_decode_with_fused_projections_is_the_plain_decode():
    """With LoRA on every projection, compiled decode steps (Inductor's C++ backend here) with fused projections give the
    plain decode's tokens: PEFT's base layers are the ones fused, the adapters' products added to each part."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from vlmkit.generation import fuse_projections, generate
    cfg = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16)
    cfg._attn_implementation = 'sdpa'
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=['q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj', 'down_proj'], init_lora_weights=False)
    model = get_peft_model(Qwen3ForCausalLM(cfg).eval(), lora).eval()
    ids = torch.randint(0, 128, (4, 9))
    plain = generate(model, ids, max_new_tokens=6, eos_token_id=[], pad_token_id=0)
    with fuse_projections(True): fused = generate(model, ids, max_new_tokens=6, eos_token_id=[], pad_token_id=0, cache='compiled')
    assert torch.equal(fused, plain)
    assert sum(isinstance(m, FusedPartLinear) for m in model.modules()) == 2 * 5    # 2 layers x q, k, v, gate, up (PEFT's base layers)
