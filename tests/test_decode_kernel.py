"""The Triton decode kernel (`vlmkit.attention.shared_decode_partials`) inside each family's rollouts: with it, a group's
prompt read once and each row's own slots row by row, greedy rollouts with a crop (both rounds, the second going on
from the KV cache) are those of every row reading its own copy. On a GPU the kernel runs where `shared_prefix_attention`
finds it can; here it runs on the CPU under Triton's interpreter, chosen in a fresh process before Triton is imported."""
import importlib.util, json, os, subprocess, sys
import pytest

SCRIPT = r'''
import json, torch
import vlmkit.attention as A
from vlmkit.attention import register_decode_attention
from vlmkit.family import FAMILIES
from vlmkit.generation import share_prompt_reads
from vlmkit.grpo import grounding_prompts, prompt_of
from vlmkit.rollout import ForcedText, rollout
A.decode_kernel_runs = lambda query, key: True            # the kernel on this CPU (interpreted), as on a GPU
calls, partials = [], A.shared_decode_partials
A.shared_decode_partials = lambda *a, **kw: calls.append(a[4:6]) or partials(*a, **kw)
report = {}
for name, fam in FAMILIES.items():
    torch.manual_seed(0)
    model, proc = fam.tiny()
    text = fam.hooks.decoder(model).config.get_text_config(decoder=True)
    if text._attn_implementation == 'sdpa': text._attn_implementation = register_decode_attention()
    prompts = [prompt_of(c) for c in grounding_prompts(fam, proc, n=2, size=(96, 64))]
    call = getattr(proc, 'tokenizer', proc)('<tool_call>Crop [8, 8, 60, 50]</tool_call>', add_special_tokens=False)['input_ids']
    run = lambda: rollout(model, proc, prompts, group_size=2, family=fam, max_new_tokens=len(call) + 8, max_tool_calls=1,
                          do_sample=False, cache='static', logits_processor=[ForcedText(call, 2)])
    with share_prompt_reads(False): own = run()
    before = len(calls)
    with share_prompt_reads(True): shared = run()
    report[name] = dict(own_calls=before, kernel_calls=len(calls) - before, groups=sorted({g for g, _ in calls[before:]}),
                        same=[a.rendered.input_ids.tolist() == b.rendered.input_ids.tolist() for a, b in zip(own, shared)],
                        logprobs=max((a.old_logprobs - b.old_logprobs).abs().max().item() for a, b in zip(own, shared)),
                        tool_calls=[r.tool_calls for r in shared])
    calls.clear()
print(json.dumps(report))
'''

@pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='Triton is not installed')
def test_rollouts_with_the_kernel_are_those_of_own_reads():
    r = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(report) == 3, report
    for name, f in report.items():
        assert f['own_calls'] == 0 and f['kernel_calls'] > 0 and f['groups'] == [2], (name, f)   # off: no kernel; on: groups of 2
        assert all(f['same']) and f['tool_calls'] == [1, 1, 1, 1], (name, f)                     # the same trajectories, crop included
        assert f['logprobs'] < 1e-4, (name, f)
