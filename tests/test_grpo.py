"""Acceptance of `vlmkit.grpo` (issue 18, items 2 and 4) on the CPU: advantages have zero mean per group; tool-inserted
tokens get exactly zero gradient through a real tiny model; the loss at ratio 1 is minus the advantage-weighted mean;
the trainer runs its steps end to end and logs every metric (rollouts from tests/text_rollout.py, a text-only stand-in)."""
import sys, tempfile
from pathlib import Path
import pytest, torch
from vlmkit.family import FAMILIES
from vlmkit.grpo import (GRPOConfig, grounding_prompts, group_advantages, grpo_loss, grpo_trainer, labelled_logprobs, padded)
from vlmkit.loss import hidden_states_instead_of_logits, shift_labels
from vlmkit.sft import prepare_model, synthetic_grounding

sys.path.insert(0, str(Path(__file__).parent))
from text_rollout import text_rollout  # noqa: E402
from forked import Forked, run_forked, wait_until_written  # noqa: E402
from vlmkit.cli import vlmkit_main  # noqa: E402


@pytest.mark.parametrize('scale', ['group', 'batch', 'none'])
def test_advantages_have_zero_mean_per_group(scale):
    g = torch.Generator().manual_seed(0)
    for G in (2, 4, 8):
        rewards = torch.rand(5 * G, generator=g).tolist()
        rewards[3] = None
        adv, stats = group_advantages(rewards, G, scale)
        groups = adv.view(5, G)
        assert groups.nansum(1).abs().max() < 1e-5
        assert stats['unscored'] == 1 and adv[3].isnan()


def test_tool_inserted_tokens_get_exactly_zero_gradient():
    fam = FAMILIES['qwen2_5_vl']
    model, processor = fam.tiny()
    model = model.float()
    r = fam.render(synthetic_grounding(fam, processor, 1)[0], processor, training=True)
    trained = (r.labels != -100).nonzero()[:, 0]
    tool = trained[2:5]                          # pretend a tool wrote these answer tokens
    labels = r.labels.clone(); labels[tool] = -100
    inputs = fam.collate([r], pack=False); inputs.pop('labels')
    with hidden_states_instead_of_logits(model) as head:
        hidden = model(**inputs).logits
    hidden.retain_grad()
    lp = labelled_logprobs(hidden, labels[None], head)
    loss, _ = grpo_loss(lp[None], lp.detach()[None] - 0.05, torch.tensor([1.3]), torch.ones(1, len(lp)))
    loss.backward()
    g = hidden.grad[0]
    assert g[tool - 1].abs().max().item() == 0.0                      # the positions that predict tool tokens
    assert (g[(shift_labels(labels) != -100)].abs().sum(-1) > 0).all()


def test_loss_at_ratio_one_is_minus_the_advantage_weighted_mean():
    lp = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    A = torch.tensor([0.5, -1.0, 2.0])
    tokens = mask.sum()
    assert grpo_loss(lp, lp, A, mask, aggregation='dapo')[0].item() == pytest.approx(-(A * mask.sum(1)).sum().item() / tokens.item())
    assert grpo_loss(lp, lp, A, mask, aggregation='grpo')[0].item() == pytest.approx(-A.mean().item())


def test_trainer_runs_and_logs_every_metric():
    fam = FAMILIES['qwen2_5_vl']
    model, processor = fam.tiny()
    digits = lambda prompts, completions, **kw: [sum(ch.isdigit() for ch in c[:4]) / 4 for c in completions]
    cfg = GRPOConfig(family='qwen2_5_vl', output_dir=tempfile.mkdtemp(), rewards={digits: 1.0}, group_size=4, prompts_per_step=2,
                     max_new_tokens=4, lr=1e-2, max_steps=2, bf16=False, report_to='none', progress=False, lora_r=8, beta=0.04, train=['x'])
    model = prepare_model(model.float(), fam, cfg, verbose=False)
    tr = grpo_trainer(cfg, model, fam, processor, grounding_prompts(fam, n=4), rollout_fn=text_rollout)
    tr.train()
    logs = [h for h in tr.state.log_history if 'reward' in h]
    assert len(logs) == 2
    for k in ('loss', 'reward', 'rewards/<lambda>', 'kl', 'clip_ratio/low', 'clip_ratio/high', 'ratio/mean',
              'completions/mean_length', 'tool_calls', 'frac_reward_zero_std'):
        assert k in logs[-1], k
    times = {k: v for k, v in logs[-1].items() if k.startswith('time/')}
    assert set(times) == {'time/generation', 'time/tools', 'time/rewards', 'time/reference', 'time/training'}, times
    assert all(v >= 0 for v in times.values()) and times['time/generation'] > 0 and times['time/training'] > 0, times
    assert logs[0]['ratio/mean'] == pytest.approx(1.0, abs=1e-4) and logs[0]['kl'] == pytest.approx(0.0, abs=1e-6)


def test_padded_lays_vectors_out():
    out, mask = padded([torch.ones(2), torch.ones(3)])
    assert out.shape == (2, 3) and mask.sum() == 5 and not mask[0, 2]


@pytest.mark.parametrize('family', list(FAMILIES))
def test_cli_grpo_runs_the_real_rollout_for_every_family(family, tmp_path):
    "`vlmkit grpo` on a family's tiny model: real tool-executing rollouts, rewards scored in the family's box space, an adapter saved."
    import json
    from vlmkit.grpo import write_grounding_prompts
    write_grounding_prompts(family, tmp_path/'prompts', n=4)
    argv = ['grpo', '--family', family, '--model', 'tiny', '--train', 'prompts/train.jsonl', '--no-bf16', '--max-steps', '2',
            '--group-size', '4', '--max-new-tokens', '12', '--output-dir', 'out', '--report-to', 'none', '--no-progress']
    r = run_forked(vlmkit_main, argv, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    logs = [h for h in json.loads((tmp_path/'out'/'trainer_state.json').read_text())['log_history'] if 'reward' in h]
    assert len(logs) == 2 and all('rewards/iou_reward' in h and 'rewards/format_reward' in h for h in logs), logs
    assert (tmp_path/'out'/'adapter_model.safetensors').is_file()


def test_example_grpo_configs_read():
    "Every examples/grpo/*.yaml is a valid GRPOConfig, one per family."
    from vlmkit.cli import read_config
    files = sorted((Path(__file__).resolve().parents[1]/'examples'/'grpo').glob('*.yaml'))
    assert [f.stem for f in files] == sorted(FAMILIES)
    for f in files:
        cfg = GRPOConfig(**read_config(f, GRPOConfig))
        assert cfg.family == f.stem and cfg.group_size == 8


def test_rollout_reuse_cache_reaches_the_rollouts():
    "`--no-rollout-reuse-cache` (after a call, prefill the whole trajectory again) is parsed into the config and handed to every rollout."
    from vlmkit.cli import grpo_config, parser
    folder = Path(tempfile.mkdtemp()); (folder/'x.jsonl').touch()
    argv = ['grpo', '--family', 'qwen2_5_vl', '--model', 'tiny', '--train', str(folder/'x.jsonl'), '--output-dir', str(folder/'out')]
    fam = FAMILIES['qwen2_5_vl']
    for flags, reuse in (([], True), (['--no-rollout-reuse-cache'], False)):
        cfg = grpo_config(parser().parse_args(argv + flags))
        assert cfg.rollout_reuse_cache is reuse
        model, processor = fam.tiny()
        tr = grpo_trainer(cfg, prepare_model(model, fam, cfg, verbose=False), fam, processor, grounding_prompts(fam, n=2))
        assert tr.rollout_kwargs['reuse_cache'] is reuse


def test_crop_space_reaches_the_rollouts_and_crop_reward():
    "`--crop-space` sets the crop tool the rollouts run and the space crop_reward reads the calls in; a space that does not exist is a ConfigError naming the field."
    from vlmkit.cli import grpo_config, parser
    from vlmkit.sft import ConfigError
    from vlmkit.grpo import check_grpo_config
    from vlmkit.tools import default_tools
    folder = Path(tempfile.mkdtemp()); (folder/'x.jsonl').touch()
    argv = ['grpo', '--family', 'internvl3_5', '--model', 'tiny', '--train', str(folder/'x.jsonl'), '--output-dir', str(folder/'out')]
    fam = FAMILIES['internvl3_5']
    for flags, space in (([], 'pixel'), (['--crop-space', 'internvl3_5'], 'k1000'), (['--crop-space', 'unit'], 'unit')):
        cfg = check_grpo_config(grpo_config(parser().parse_args(argv + flags)))
        model, processor = fam.tiny()
        tr = grpo_trainer(cfg, prepare_model(model, fam, cfg, verbose=False), fam, processor, grounding_prompts(fam, n=2))
        assert tr.crop_space == space
        assert tr.rollout_kwargs['tools']['Crop'].description == default_tools(space)['Crop'].description
    with pytest.raises(ConfigError, match="crop_space: crop space 'inches'"):
        check_grpo_config(grpo_config(parser().parse_args(argv + ['--crop-space', 'inches'])))


# --- learning, and a killed run resumed ---

LEARN_REWARD = '''
def letter_share(prompts, completions, **columns):
    "The share of the completion's characters that are the letter 'a': the behaviour the policy must learn."
    return [sum(ch == 'a' for ch in text) / max(len(text), 1) for text in completions]
'''

def _grpo_cli(tmp_path, *flags, family='qwen2_5_vl', wait=True):
    "`vlmkit grpo` learning to write 'a' (`LEARN_REWARD`) in `tmp_path`, in a process forked from this one (tests/forked.py); `wait=False`: the process, running."
    if not (tmp_path/'prompts').exists():
        from vlmkit.grpo import write_grounding_prompts
        write_grounding_prompts(family, tmp_path/'prompts', n=8)
        (tmp_path/'learn_rewards.py').write_text(LEARN_REWARD)
    argv = ['grpo', '--family', family, '--model', 'tiny', '--train', 'prompts/train.jsonl', '--no-bf16',
            '--rewards', 'learn_rewards:letter_share=1', '--group-size', '8', '--prompts-per-step', '4', '--max-new-tokens', '8',
            '--report-to', 'none', '--no-progress', *map(str, flags)]
    if not wait: return Forked(vlmkit_main, argv, cwd=tmp_path, path=[tmp_path])
    r = run_forked(vlmkit_main, argv, cwd=tmp_path, path=[tmp_path])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r

def _rewards(out):
    import json
    return [h['reward'] for h in json.loads((out/'trainer_state.json').read_text())['log_history'] if 'reward' in h]

def test_the_mean_reward_rises(tmp_path):
    "Seeded, on CPU: the tiny Qwen2.5-VL (every parameter trained, lr 1e-2) learns to write 'a': mean reward of the last 5 of 25 steps >= 0.5, from <= 0.05 in the first 5."
    _grpo_cli(tmp_path, '--no-lora', '--lr', '1e-2', '--max-steps', '25', '--output-dir', 'out', '--save-steps', '1000')
    r = _rewards(tmp_path/'out')
    assert len(r) == 25 and sum(r[:5]) / 5 <= 0.05 and sum(r[-5:]) / 5 >= 0.5, r

def test_a_killed_grpo_run_resumed_ends_with_the_same_adapter(tmp_path):
    import signal
    from safetensors.torch import load_file
    _grpo_cli(tmp_path, '--lr', '5e-2', '--max-steps', '12', '--save-steps', '4', '--output-dir', 'whole')
    p = _grpo_cli(tmp_path, '--lr', '5e-2', '--max-steps', '12', '--save-steps', '4', '--output-dir', 'cut', wait=False)
    written = wait_until_written(p, tmp_path/'cut'/'checkpoint-8'/'trainer_state.json')
    p.kill()
    assert p.wait() == -signal.SIGKILL and written and not (tmp_path/'cut'/'adapter_model.safetensors').exists()
    _grpo_cli(tmp_path, '--lr', '5e-2', '--max-steps', '12', '--save-steps', '4', '--output-dir', 'cut')
    whole, cut = (load_file(tmp_path/d/'adapter_model.safetensors') for d in ('whole', 'cut'))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    assert _rewards(tmp_path/'cut')[-4:] == _rewards(tmp_path/'whole')[-4:]

def test_vlmkit_train_both_runs_sft_then_grpo_from_its_adapter(tmp_path):
    "`vlmkit train --stage both`: SFT trains and saves its adapter; GRPO merges it into the base (init_adapter) and trains on."
    import yaml
    from vlmkit.grpo import write_grounding_prompts
    from vlmkit.sft import synthetic_grounding
    from vlmkit.data import write_conversations
    fam = FAMILIES['internvl3_5']
    _, processor = fam.tiny()
    write_conversations(synthetic_grounding(fam, processor, 8), tmp_path/'sft'/'train.jsonl', image_dir=tmp_path/'sft'/'images')
    write_grounding_prompts(fam.name, tmp_path/'prompts', n=4)
    common = dict(family=fam.name, model='tiny', bf16=False, report_to='none', progress=False, max_steps=2, lora_r=8, lora_alpha=16)
    (tmp_path/'pipeline.yaml').write_text(yaml.safe_dump(dict(
        sft=common | dict(train=['sft/train.jsonl'], output_dir='sft-out', batch_tokens=600, lr=1e-3),
        grpo=common | dict(train=['prompts/train.jsonl'], output_dir='grpo-out', group_size=4, prompts_per_step=2, max_new_tokens=8))))
    argv = ['train', '--stage', 'both', '--config', 'pipeline.yaml']
    r = run_forked(vlmkit_main, argv, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (tmp_path/'sft-out'/'adapter_model.safetensors').is_file() and (tmp_path/'grpo-out'/'adapter_model.safetensors').is_file()
    assert yaml.safe_load((tmp_path/'grpo-out'/'grpo_config.yaml').read_text())['init_adapter'] == 'sft-out'

@pytest.mark.parametrize('loss_type', ['grpo', 'bnpo', 'dapo', 'dr_grpo'])
def test_training_in_rows_of_train_tokens_is_training_in_one_row(loss_type, monkeypatch):
    "`train_tokens`: the micro-batch's rollouts trained in several packed rows (a forward and backward each) give the gradients, loss and metrics of one row."
    import vlmkit.grpo as G
    from transformers import TrainerCallback
    fam = FAMILIES['qwen2_5_vl']
    calls = []
    def counted(*args, **kw): calls.append(len(args[2])); return sample_logprobs(*args, **kw)
    sample_logprobs = G.sample_logprobs
    monkeypatch.setattr(G, 'sample_logprobs', counted)
    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    def run(train_tokens):
        model, processor = fam.tiny()
        digits = lambda prompts, completions, **kw: [sum(ch.isdigit() for ch in c[:6]) / 6 for c in completions]
        cfg = GRPOConfig(family='qwen2_5_vl', output_dir=tempfile.mkdtemp(), rewards={digits: 1.0}, group_size=4, prompts_per_step=2,
                         max_new_tokens=6, max_steps=1, bf16=False, report_to='none', progress=False, lora_r=8, beta=0.04,
                         loss_type=loss_type, train_tokens=train_tokens, train=['x'])
        model = prepare_model(model.float(), fam, cfg, verbose=False)
        tr = grpo_trainer(cfg, model, fam, processor, grounding_prompts(fam, n=2), rollout_fn=text_rollout)
        tr.add_callback(grads := Grads())
        tr.train()
        return grads.grads, next(h for h in tr.state.log_history if 'reward' in h)
    one, one_log = run(None)
    assert calls == [8, 8]; calls.clear()             # the reference forward, then the policy's
    rows, rows_log = run(1)                            # every rollout its own row
    assert calls == [1] * 16
    assert one.keys() == rows.keys() and any(g.abs().max() > 0 for g in one.values())
    for k in one: torch.testing.assert_close(rows[k], one[k], rtol=1e-4, atol=1e-6 * float(one[k].abs().max()))
    for k in ('loss', 'kl', 'clip_ratio/region', 'ratio/mean', 'reward'): assert rows_log[k] == pytest.approx(one_log[k], rel=1e-5, abs=1e-7), k

RANK_REWARD = '''
import os
def rank(prompts, completions, **columns):
    "The rank of the process that scored the completion: over both processes its mean is 0.5, on rank 0 alone 0."
    return [float(os.environ.get('RANK', 0))] * len(completions)
'''

def test_two_processes_split_the_prompts_and_log_both(tmp_path):
    "`accelerate launch` with two CPU processes (gloo): each rolls out its own prompts, an epoch of 8 prompts at 2 a micro-batch is 2 steps, and the logged rewards are both processes'."
    import json, os, subprocess
    from test_sft import ENV, LAUNCH_2
    from vlmkit.grpo import write_grounding_prompts
    write_grounding_prompts('qwen2_5_vl', tmp_path/'prompts', n=8)
    (tmp_path/'rank_reward.py').write_text(RANK_REWARD)
    env = ENV | dict(PYTHONPATH=os.pathsep.join([ENV['PYTHONPATH'], str(tmp_path)]))
    r = subprocess.run([*LAUNCH_2, 'grpo', '--family', 'qwen2_5_vl', '--model', 'tiny', '--train', 'prompts/train.jsonl', '--no-bf16',
                        '--rewards', 'rank_reward:rank=1', '--group-size', '2', '--prompts-per-step', '2', '--max-new-tokens', '4',
                        '--epochs', '1', '--logging-steps', '1', '--report-to', 'none', '--no-progress', '--output-dir', 'out'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    state = json.loads((tmp_path/'out'/'trainer_state.json').read_text())
    logs = [h for h in state['log_history'] if 'reward' in h]
    assert state['global_step'] == 2 and len(logs) == 2, state['log_history']
    assert all(h['rewards/rank_reward:rank'] == 0.5 and h['reward'] == 0.5 for h in logs), logs   # 0 if rank 0's alone
