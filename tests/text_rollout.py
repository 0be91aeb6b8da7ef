"""A stand-in for `vlmkit.rollout.rollout` in GRPO tests: text-only completions sampled with `Family.generate`, no tool
calls, each rendered as SFT renders it, with old log-probs from the sampling policy. Same signature and `Rollout` fields
as the contract in ISSUE18.md, so `GRPOTrainer` cannot tell them apart."""
from dataclasses import dataclass
import torch
from vlmkit.conversation import Conversation
from vlmkit.family import Rendered, family_of
from vlmkit.grpo import sample_logprobs
from vlmkit.lora import base_of


@dataclass
class Rollout:
    prompt_index: int
    conversation: Conversation
    rendered: Rendered
    old_logprobs: torch.Tensor
    text: str
    tool_calls: int = 0
    tool_errors: int = 0
    finished: bool = True
    tool_seconds: float = 0.0


def text_rollout(model, processor, prompts, group_size=8, family=None, max_new_tokens=16, max_tool_calls=0, tools=None,
                 do_sample=True, temperature=1.0, top_p=1.0, top_k=None, generator=None, cache='dynamic',
                 reuse_cache=True):
    fam = family_of(family if family is not None else model)
    tok = getattr(processor, 'tokenizer', processor)
    stops = set(fam.stop_ids(processor))
    convs = [p for p in prompts for _ in range(group_size)]
    ids = fam.generate(base_of(model), processor, convs, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                       top_p=top_p, top_k=top_k, generator=generator, cache=cache)
    out = []
    for i, (conv, row) in enumerate(zip(convs, ids.tolist())):
        cut = next((j for j, t in enumerate(row) if t in stops or t == tok.pad_token_id), len(row))
        text = tok.decode(row[:cut], skip_special_tokens=True)
        done = conv.with_turn('assistant', text)
        out.append(Rollout(i // group_size, done, fam.render(done, processor, training=True), None, text, finished=cut < len(row)))
    with torch.no_grad():
        lps = sample_logprobs(model, fam, [r.rendered for r in out], temperature)
    for r, lp in zip(out, lps):
        r.old_logprobs = torch.zeros(len(r.rendered), dtype=torch.float32)
        r.old_logprobs[1:][r.rendered.labels[1:] != -100] = lp.float().cpu()
    return out
