"""Acceptance of `vlmkit.sft` and `vlmkit sft` (issue 16), on the CPU with the tiny models: packed rows give every sample
the loss and gradients of its own forward (every family); SFT through the command makes the loss fall (every family);
a run killed with SIGKILL and run again ends with the same adapter, bit for bit; two processes take half the optimizer
steps and follow the loss curve of one process with the same global batch; bad samples are reported with their file
and line and the good ones train. The command runs in processes of its own, one thread each: forked from the test's
interpreter (tests/forked.py), or started by `accelerate launch` for two."""
import json, os, signal, subprocess, sys
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from vlmkit.data import read_conversations, write_conversations
from vlmkit.family import FAMILIES
from forked import Forked, run_forked, wait_until_written
from vlmkit.cli import vlmkit_main
from vlmkit.sft import (SFTConfig, ConfigError, ConversationDataset, check_config, RowCollator, SFTTrainer, measure, plan_packs, rows_of, synthetic_grounding,
                        token_losses, training_arguments)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'OMP_NUM_THREADS': '1',
       'HF_HUB_DISABLE_PROGRESS_BARS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
LAUNCH_2 = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
            '--mixed_precision', 'no', '--dynamo_backend', 'no', '-m', 'vlmkit']
FAMILY_NAMES = list(FAMILIES)


def write_grounding(family:str, folder:Path, n:int=32) -> Path:
    "`n` synthetic grounding conversations of `family` as JSONL in `folder`, their images in `folder`/images."
    fam = FAMILIES[family]
    _, processor = fam.tiny()
    return write_conversations(synthetic_grounding(fam, processor, n), folder/'train.jsonl', image_dir=folder/'images')

def write_config(folder:Path, family:str, **kw) -> Path:
    "A YAML config for the tiny `family` on `train.jsonl` in `folder`: fp32, LoRA r=8, no reports; `kw` on top."
    cfg = dict(family=family, model='tiny', train=['train.jsonl'], lr=3e-3, lora_r=8, lora_alpha=16, epochs=2, batch_tokens=450,
               logging_steps=1, save_steps=1000, bf16=False, report_to='none', progress=False) | kw
    import yaml
    (folder/'cfg.yaml').write_text(yaml.safe_dump(cfg))
    return folder/'cfg.yaml'

def vlmkit_sft(folder:Path, *args, launch=None) -> subprocess.CompletedProcess:
    "`vlmkit sft --config cfg.yaml *args` in `folder`: a process forked from this one (tests/forked.py), or started by `launch`."
    argv = ['sft', '--config', 'cfg.yaml', *map(str, args)]
    if launch is None: r = run_forked(vlmkit_main, argv, cwd=folder)
    else: r = subprocess.run([*launch, *argv], cwd=folder, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r

def history(out:Path) -> list[dict]:
    return [h for h in json.loads((out/'trainer_state.json').read_text())['log_history'] if 'loss' in h]

def adapter(out:Path) -> dict: return load_file(out/'adapter_model.safetensors')


# --- (d) packed rows = separate forwards, for every family ---

@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_packed_row_of_4_gives_each_sample_its_own_loss_and_gradients(family):
    fam = FAMILIES[family]
    model, processor = fam.tiny()
    model = fam.enable_packing(model.float().train())
    rendered = [fam.render(c, processor, training=True) for c in synthetic_grounding(fam, processor, 4, seed=7, size=(80, 56))]
    assert len({len(r) for r in rendered}) > 1 or family == 'internvl3_5'   # images of one size give InternVL equal tiles
    n = sum(r.n_trained for r in rendered)
    row = fam.collate(rendered, pack=True)
    model.zero_grad()
    model(**row, num_items_in_batch=n).loss.backward()
    packed_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    row.pop('labels')
    with torch.no_grad(): logits = model(**row).logits[0]
    starts = torch.tensor([0] + [len(r) for r in rendered]).cumsum(0).tolist()
    packed = torch.stack([token_losses(logits[s:s + len(r)], r.labels).sum() / r.n_trained for s, r in zip(starts, rendered)])
    model.zero_grad()
    alone = []
    for r in rendered:
        out = model(**fam.collate([r], pack=False), num_items_in_batch=n)   # one sample, the unpacked attention path
        out.loss.backward()
        alone.append(out.loss.detach() * n / r.n_trained)
    alone = torch.stack(alone)
    assert (packed - alone).abs().max() <= 1e-5, (packed, alone)
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == packed_grads.keys() and len(grads) > 10
    worst = max(((packed_grads[k] - grads[k]).abs().max() / grads[k].abs().max().clamp(min=1e-12)).item() for k in grads)
    assert worst <= 1e-5, worst


# --- the loss of a step and the eval loss are means over trained tokens ---

def _manual_loss(fam, model, rendered) -> tuple[float, int]:
    "Summed next-token loss and trained-token count of `rendered`, each sample alone."
    total, n = 0.0, 0
    with torch.no_grad():
        for r in rendered:
            inputs = fam.collate([r], pack=False)
            labels = inputs.pop('labels')
            total += token_losses(model(**inputs).logits[0], labels[0]).sum().item(); n += r.n_trained
    return total, n

def _trainer(fam, model, rows, tmp_path, **kw):
    cfg = SFTConfig(family=fam.name, output_dir=str(tmp_path/'out'), lr=1e-3, bf16=False, report_to='none', progress=False, logging_steps=1)
    args = training_arguments(cfg, save_strategy='no', train_sampling_strategy='sequential', **kw)
    return SFTTrainer(model=model, args=args, data_collator=RowCollator(fam, rows.samples[0]), train_dataset=rows, eval_dataset=rows)

def test_a_step_loss_is_the_mean_over_its_trained_tokens_and_so_is_eval_loss(tmp_path):
    "Two rows training different token counts, accumulated into one step: the step's loss is their summed loss over the summed count."
    fam = FAMILIES['qwen2_5_vl']
    model, processor = fam.tiny()
    model = fam.enable_packing(model.float())
    convs = synthetic_grounding(fam, processor, 5)
    rows, _ = rows_of(convs, fam, processor, budget=10_000, shuffle=False)
    rows.packs = [[0], [1, 2, 3, 4]]                  # 1 sample, then 4: very different token counts
    rendered = [rows.samples[i] for i in range(5)]
    total, n = _manual_loss(fam, model, rendered)
    one = rendered[0].n_trained
    assert one * 3 < n - one                            # a row mean would weigh the first sample's tokens 4x as much
    trainer = _trainer(fam, model, rows, tmp_path, gradient_accumulation_steps=2, max_steps=1)
    assert trainer.evaluate()['eval_loss'] == pytest.approx(total / n, abs=1e-5)
    assert trainer.evaluate()['eval_tokens'] == n
    trainer.train()
    logged = [h['loss'] for h in trainer.state.log_history if 'loss' in h]
    assert logged == [pytest.approx(total / n, abs=1e-5)], (logged, total / n)


# --- (a) SFT through the command: the loss falls, for every family ---

@pytest.mark.parametrize('family', FAMILY_NAMES)
def test_cli_sft_loss_falls(family, tmp_path):
    write_grounding(family, tmp_path)
    write_config(tmp_path, family, epochs=3, batch_tokens=600)
    r = vlmkit_sft(tmp_path, '--output-dir', 'out')
    assert r.stdout.splitlines()[-1] == 'adapter saved to out', r.stdout[-500:]
    losses = [h['loss'] for h in history(tmp_path/'out')]
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first - 0.25, losses
    assert (tmp_path/'out'/'skipped.jsonl').read_text() == ''
    assert set(adapter(tmp_path/'out'))


# --- (b) killed with SIGKILL after a checkpoint, run again: the same adapter, bit for bit ---

def test_killed_and_resumed_run_ends_with_the_same_adapter(tmp_path):
    write_grounding('ovis2_5', tmp_path)
    write_config(tmp_path, 'ovis2_5', epochs=6, save_steps=4)
    vlmkit_sft(tmp_path, '--output-dir', 'whole')
    steps = json.loads((tmp_path/'whole'/'trainer_state.json').read_text())['global_step']
    argv = ['sft', '--config', 'cfg.yaml', '--output-dir', 'cut']
    p = Forked(vlmkit_main, argv, cwd=tmp_path)
    mark = tmp_path/'cut'/'checkpoint-8'/'trainer_state.json'
    written = wait_until_written(p, mark)
    p.kill()
    assert p.wait() == -signal.SIGKILL and written
    assert not (tmp_path/'cut'/'adapter_model.safetensors').exists() and not (tmp_path/'cut'/f'checkpoint-{steps}').exists()
    r = vlmkit_sft(tmp_path, '--output-dir', 'cut')
    resumed = [l for l in r.stdout.splitlines() if l.startswith('resuming from')]
    assert len(resumed) == 1 and int(resumed[0].rsplit('-', 1)[1]) >= 8, r.stdout[-2000:]
    whole, cut = adapter(tmp_path/'whole'), adapter(tmp_path/'cut')
    assert whole.keys() == cut.keys()
    for k in whole: assert torch.equal(whole[k], cut[k]), k
    assert history(tmp_path/'cut')[-1] == history(tmp_path/'whole')[-1]


# --- (c) two processes: half the steps; the loss curve of one process with the same global batch ---

def _rows(family:str, data:Path, budget:int) -> int:
    fam = FAMILIES[family]
    _, processor = fam.tiny()
    convs, _ = read_conversations(data)
    return len(plan_packs(measure(ConversationDataset(convs, fam, processor)), budget, seed=0))

def test_two_processes_take_half_the_steps_and_follow_the_same_loss_curve(tmp_path):
    family = 'internvl3_5'
    data = write_grounding(family, tmp_path, n=16)
    budget = next(b for b in range(400, 1200, 25) if _rows(family, data, b) % 2 == 0)
    rows = _rows(family, data, budget)
    write_config(tmp_path, family, epochs=2, batch_tokens=budget)
    vlmkit_sft(tmp_path, '--output-dir', 'one')                                 # 1 process, 1 row per step
    vlmkit_sft(tmp_path, '--output-dir', 'one_accum2', '--grad-accum', 2)       # 1 process, 2 rows per step
    r = vlmkit_sft(tmp_path, '--output-dir', 'two', launch=LAUNCH_2)            # 2 processes, 1 row each per step
    assert f'{rows // 2} per process' in r.stdout, r.stdout[-2000:]
    steps = {d: json.loads((tmp_path/d/'trainer_state.json').read_text())['global_step'] for d in ('one', 'one_accum2', 'two')}
    assert steps == dict(one=2 * rows, one_accum2=rows, two=rows), (steps, rows)
    two, same_batch = history(tmp_path/'two'), history(tmp_path/'one_accum2')
    assert len(two) == len(same_batch) == rows
    for a, b in zip(two, same_batch):
        assert abs(a['loss'] - b['loss']) <= 1e-5 and a['step'] == b['step'], (a, b)
    a, b = adapter(tmp_path/'two'), adapter(tmp_path/'one_accum2')
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


# --- bad samples: reported with file and line, the good ones train ---

def test_bad_samples_are_reported_with_file_and_line_and_the_rest_trains(tmp_path):
    data = write_grounding('qwen2_5_vl', tmp_path, n=12)
    lines = data.read_text().splitlines()
    missing = json.loads(lines[1]); missing['messages'][0]['content'][0]['image'] = 'images/missing.png'
    outside = json.loads(lines[2]); outside['messages'][0]['content'][0]['boxes'] = [[0, 0, 100, 10]]
    no_answer = json.loads(lines[3]); no_answer['messages'] = no_answer['messages'][:1]
    data.write_text('\n'.join([lines[0], json.dumps(missing), json.dumps(outside), json.dumps(no_answer), *lines[4:], lines[5][:40]]) + '\n')
    write_config(tmp_path, 'qwen2_5_vl', epochs=1)
    r = vlmkit_sft(tmp_path, '--output-dir', 'out')
    skipped = [json.loads(l) for l in (tmp_path/'out'/'skipped.jsonl').read_text().splitlines()]
    where = {s['line']: (s['kind'], s['reason']) for s in skipped}
    assert sorted(where) == [2, 3, 4, 13] and all(s['source'] == 'train.jsonl' for s in skipped), skipped
    assert where[2][0] == 'image' and 'missing.png' in where[2][1] and where[3][0] == 'box'
    assert where[4][0] == 'answer' and where[13][0] == 'json', where
    assert 'train: 9 samples' in r.stdout and '4 samples skipped' in r.stdout.splitlines()[-1], r.stdout[-1500:]


def test_a_sample_over_the_row_budget_is_skipped_or_truncated(tmp_path):
    write_grounding('ovis2_5', tmp_path, n=8)
    write_config(tmp_path, 'ovis2_5', epochs=1, batch_tokens=100)     # the samples have 97-103 tokens: one a row
    vlmkit_sft(tmp_path, '--output-dir', 'skip', '--save-steps', 1000)
    skipped = [json.loads(l) for l in (tmp_path/'skip'/'skipped.jsonl').read_text().splitlines()]
    assert len(skipped) == 8 - json.loads((tmp_path/'skip'/'trainer_state.json').read_text())['global_step'] > 0
    assert {s['kind'] for s in skipped} == {'length'} and all('over the row budget of 100' in s['reason'] for s in skipped)
    r = vlmkit_sft(tmp_path, '--output-dir', 'cut', '--truncate-long')
    assert (tmp_path/'cut'/'skipped.jsonl').read_text() == '' and 'train: 8 samples in 8 rows' in r.stdout, r.stdout[-1500:]


def test_a_sample_that_fails_while_training_is_skipped_and_reported(tmp_path):
    "An image that vanishes after the rows were planned: the row trains without it, the trainer reports it once per split."
    fam = FAMILIES['qwen2_5_vl']
    model, processor = fam.tiny()
    convs, _ = read_conversations(write_grounding('qwen2_5_vl', tmp_path, n=6))
    rows, bad = rows_of(convs, fam, processor, budget=10_000)
    assert bad == [] and len(rows) == 1
    Path(convs[3].images[0].item.src).unlink()
    cfg = SFTConfig(family='qwen2_5_vl', output_dir=str(tmp_path/'out'), lr=1e-3, max_steps=2, bf16=False, report_to='none', progress=False)
    args = training_arguments(cfg, save_strategy='no')
    filler = rows.samples[0]
    trainer = SFTTrainer(model=fam.enable_packing(model.float()), args=args, data_collator=RowCollator(fam, filler), train_dataset=rows)
    trainer.train()
    assert list(trainer.skipped) == [('train', 3)]
    s = trainer.skipped['train', 3]
    assert (s.source, s.line) == (str(tmp_path/'train.jsonl'), 4) and 'file not found' in s.reason


# --- the example configurations ---

def test_example_configs_read():
    from vlmkit.cli import read_config
    configs = sorted((ROOT/'examples'/'sft').glob('*.yaml'))
    assert {p.stem for p in configs} == set(FAMILIES)
    for p in configs:
        cfg = SFTConfig(**read_config(p))
        assert cfg.family == p.stem and cfg.model != 'tiny' and cfg.bf16
    for p in (ROOT/'examples'/'accelerate').glob('*.json'): assert json.loads(p.read_text())['zero_optimization']['stage'] in (2, 3)
    import yaml
    assert yaml.safe_load((ROOT/'examples'/'accelerate'/'fsdp.yaml').read_text())['distributed_type'] == 'FSDP'


def test_a_resumed_run_says_what_changed_since_its_checkpoint(tmp_path, capsys):
    from dataclasses import asdict, replace
    import yaml
    from vlmkit.sft import resume_point
    cfg = SFTConfig(family='ovis2_5', train=['train.jsonl'], output_dir=str(tmp_path/'out'), batch_tokens=450)
    (tmp_path/'out'/'checkpoint-2').mkdir(parents=True)
    (tmp_path/'out'/'checkpoint-2'/'trainer_state.json').write_text('{}')
    (tmp_path/'out'/'sft_config.yaml').write_text(yaml.safe_dump(asdict(cfg)))
    assert resume_point(replace(cfg, logging_steps=1)) == str(tmp_path/'out'/'checkpoint-2')
    assert capsys.readouterr().out == 'resuming from checkpoint-2\n'
    resume_point(replace(cfg, batch_tokens=600))
    assert 'with a changed configuration (batch_tokens: 450 -> 600)' in capsys.readouterr().out
    assert resume_point(replace(cfg, resume=False)) is None


# --- compiled blocks ---

def test_compiled_blocks_train_like_eager_ones(tmp_path):
    "`--compile aot_eager` (torch.compile's graphs without inductor's code generation, which a 2-core CI cannot afford): the same losses as eager."
    write_grounding('internvl3_5', tmp_path, n=8)
    write_config(tmp_path, 'internvl3_5', max_steps=3)
    vlmkit_sft(tmp_path, '--output-dir', 'eager')
    vlmkit_sft(tmp_path, '--output-dir', 'compiled', '--compile', 'aot_eager')
    eager, compiled = ([h['loss'] for h in history(tmp_path/d)] for d in ('eager', 'compiled'))
    assert len(eager) == 3 and compiled == pytest.approx(eager, abs=1e-5), (eager, compiled)

def test_an_unknown_compile_backend_is_a_config_error(tmp_path):
    write_grounding('internvl3_5', tmp_path, n=2)
    with pytest.raises(ConfigError, match="compile: 'inductr' is not a torch.compile backend"):
        check_config(SFTConfig(family='internvl3_5', train=[str(tmp_path/'train.jsonl')], compile='inductr'))

def test_offloaded_activations_train_like_kept_ones(tmp_path):
    "`--offload-activations`: what the forward saves waits in host memory; the losses are the same."
    write_grounding('qwen2_5_vl', tmp_path, n=8)
    write_config(tmp_path, 'qwen2_5_vl', max_steps=3, checkpointing=True)
    vlmkit_sft(tmp_path, '--output-dir', 'kept')
    vlmkit_sft(tmp_path, '--output-dir', 'offloaded', '--offload-activations')
    kept, offloaded = ([h['loss'] for h in history(tmp_path/d)] for d in ('kept', 'offloaded'))
    assert len(kept) == 3 and offloaded == kept, (kept, offloaded)
    assert adapter(tmp_path/'kept').keys() == adapter(tmp_path/'offloaded').keys()
    assert all(torch.equal(a, b) for a, b in zip(adapter(tmp_path/'kept').values(), adapter(tmp_path/'offloaded').values()))
