"""The tour's chain for the families other than the default (nbs/80_tour.ipynb runs the default one in full, and
tests/test_entry_points.py runs `vlmkit-tour` short): data, SFT, evaluation, R-GRPO with the crop tool, evaluation
again and the outputs, each stage a few steps on a handful of samples, in this process."""
import json
import pytest
from vlmkit.tour import run_tour

SHORT = dict(sft_samples=4, sft_steps=2, grpo_prompts=2, grpo_steps=1, group_size=2, prompts_per_step=1, max_new_tokens=24,
             refcoco_images=4)

@pytest.mark.parametrize('family', ['ovis2_5', 'qwen2_5_vl'])
def test_the_whole_chain_runs_short_for_the_family(family, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_tour('out', family, verbose=False, **SHORT)
    assert [p.name for p in r['paths']] == ['table.md', 'table.json', 'boxes.png', 'rewards.png', 'trajectory.png']
    assert all(p.is_file() and p.stat().st_size > 0 for p in r['paths'])
    table = json.loads((tmp_path/'out'/'table.json').read_text())
    assert table['settings']['family'] == family
    assert table['rows'][-1]['dataset'] == 'macro average' and table['rows'][-1]['n'] == len(r['before']) == len(r['after'])
    assert {rec['family'] for rec in r['before'] + r['after']} == {family}
    assert len(table['rewards']) == 1 and len(r['rollouts']) == 1 and len(r['rollouts'][0]) == 2   # one step: 1 prompt x 2 completions
    assert (tmp_path/'out'/'grpo'/'adapter_model.safetensors').is_file() and (tmp_path/'out'/'sft'/'config.json').is_file()
