"""Compiled blocks on a packed, checkpointed Ovis2.5: captured at all (no silent fall-back to eager), same loss and
gradients, and one set of graphs for packs of any length; with attention kept through checkpointing, the backward
pass runs no attention kernel. Uses vlmkit.testing.RecordingBackend: graph capture without code generation, so it
runs in seconds on any CPU (TorchInductor itself is exercised in nbs/52_compiling.ipynb, #| slow)."""
import pytest, torch
from vlmkit.attention import attention_kernels
from vlmkit.compiling import compile_blocks
from vlmkit.lora import enable_checkpointing
from vlmkit.testing import RecordingBackend, count_calls
from vlmkit.ovis.modeling import Ovis2_5, pack_samples, random_sample, tiny_ovis25_config

# On a machine with a GPU, Dynamo's first frame reads the CUDA RNG state, which starts CUDA; inside a checkpointed
# forward of this CPU model, that makes torch.utils.checkpoint refuse ("device state was initialized in the forward
# pass"). Starting CUDA up front, as moving any model to the GPU does, keeps this test independent of test order.
if torch.cuda.is_available(): torch.cuda.init()

def _packed(seed:int, shapes) -> dict:
    g = torch.Generator().manual_seed(seed)
    samples = [random_sample(hw, n, vocab=300, generator=g, labelled=True) for hw, n in shapes]
    return {k: v for k, v in pack_samples(samples).items() if k != 'seq_lens'}

def _loss_and_grads(model, batch, count=True):
    "Loss, gradients, and how many attention kernels the backward pass ran (`None` unless `count`)."
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    if not count: loss.backward()
    else:
        # counting is a dispatch mode: a compiled part that checkpointing recomputes under it fails Dynamo's guards
        # (another dispatch key) and is compiled again, which fail_on_recompile below would take for a new length
        with count_calls(attention_kernels()) as counter: loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, counter.n if count else None

def _tiny_ovis():
    torch.manual_seed(0)
    return Ovis2_5(tiny_ovis25_config(llm=dict(vocab_size=300))).train()

def _assert_same_grads(got, ref):
    assert got.keys() == ref.keys()
    for n in ref: assert torch.allclose(got[n], ref[n], atol=1e-6), n

def test_compiled_checkpointed_ovis_equals_eager_and_does_not_recompile():
    model = _tiny_ovis()
    enable_checkpointing(model)
    first, second = _packed(0, [((4, 6), 9), (None, 7)]), _packed(1, [((6, 8), 5), ((2, 4), 12), (None, 3)])
    ref = [_loss_and_grads(model, b, count=False) for b in (first, second)]
    torch.compiler.reset()
    backend = RecordingBackend()
    parts = compile_blocks(model, backend=backend)
    # Qwen3 layers: attention, MLP, two RMSNorms; ViT layers: attention and MLP (their nn.LayerNorms are PyTorch's own)
    assert len(parts) == 4 * model.config.llm_config.num_hidden_layers + 2 * model.config.vit_config.num_hidden_layers
    got = [_loss_and_grads(model, first, count=False)]
    assert backend.graphs, "nothing was captured: the blocks ran eagerly"
    with torch.compiler.set_stance('fail_on_recompile'):   # a pack of other lengths must not recompile: this raises if it does
        got.append(_loss_and_grads(model, second, count=False))
    for (loss, grads, _), (ref_loss, ref_grads, _) in zip(got, ref):
        assert torch.allclose(loss, ref_loss, atol=1e-6)
        _assert_same_grads(grads, ref_grads)
    torch.compiler.reset()

def test_kept_attention_is_not_run_again_in_the_backward_with_compiled_blocks():
    model = _tiny_ovis()
    batch = _packed(2, [((4, 6), 9), ((2, 2), 5), (None, 7)])
    layers = model.config.llm_config.num_hidden_layers + model.config.vit_config.num_hidden_layers
    enable_checkpointing(model)
    _, ref, ref_calls = _loss_and_grads(model, batch)
    assert ref_calls == layers, "plain checkpointing should run every layer's attention again"
    torch.compiler.reset()
    backend = RecordingBackend()
    compile_blocks(model, backend=backend)
    enable_checkpointing(model, keep_attention=True)
    _, got, calls = _loss_and_grads(model, batch)
    assert backend.graphs, "nothing was captured: the blocks ran eagerly"
    assert calls == 0, f"attention ran {calls} times in the backward"
    _assert_same_grads(got, ref)
    torch.compiler.reset()

def test_attention_kept_only_in_the_layers_a_regex_picks():
    model = _tiny_ovis()
    batch = _packed(3, [((4, 6), 9), ((2, 2), 5), (None, 7)])
    enable_checkpointing(model)
    _, ref, _ = _loss_and_grads(model, batch)
    enable_checkpointing(model, keep_attention='visual_tokenizer')
    _, got, calls = _loss_and_grads(model, batch)
    assert calls == model.config.llm_config.num_hidden_layers, "the LLM's attention should run again in the backward, the ViT's not"
    _assert_same_grads(got, ref)
    with pytest.raises(ValueError, match='matches none of the checkpointed layers'): enable_checkpointing(model, keep_attention='no_such_layer')
