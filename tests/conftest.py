import os, time
import pytest

# Tests and the notebooks they run load and save tiny checkpoints; their progress bars would only fill the executed
# notebooks (and so the docs pages) with noise. huggingface_hub's documented switch, read by transformers on import.
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
from vlmkit.family import FAMILIES  # after the switch: it may import transformers

SESSION_START = time.time()
if os.environ.get('PYTEST_XDIST_WORKER'):   # `pytest -n 2`: one worker per core, each on one thread
    import torch
    torch.set_num_threads(1)

def pytest_configure(config):
    config.addinivalue_line('markers', 'docs: checks of the rendered documentation site (run after the notebooks)')

# The longest test files first (as measured on CI's 2 cores, longest first), so that the two workers of `pytest -n 2
# --dist loadfile --no-loadscope-reorder` end together; then the docs site, built from the notebooks the notebook tests
# (among the longest) execute, while the short files fill the other worker's time; the short files last.
LONGEST_FIRST = ('test_bench.py', 'test_sft.py', 'test_notebooks_apps.py', 'test_grpo.py', 'test_rollout.py', 'test_notebooks.py',
                 'test_rewards.py', 'test_wheel.py', 'test_entry_points.py', 'test_ovis_preprocessing.py', 'test_ovis_model.py',
                 'test_internvl_tiling.py', 'test_boxes_properties.py', 'test_grounding.py')

def pytest_collection_modifyitems(config, items):
    "The longest test files first, then the docs site (after the notebooks it is built from), then the rest."
    first = {name: i for i, name in enumerate(LONGEST_FIRST)}
    def rank(it): return len(first) if it.get_closest_marker('docs') is not None else first.get(it.path.name, len(first) + 1)
    items.sort(key=rank)

def wait_for_notebooks(session, timeout:float=1800):
    "Under pytest-xdist other workers run the notebooks: wait until each notebook test of this session has run (its file in NOTEBOOKS_DONE)."
    if not os.environ.get('PYTEST_XDIST_WORKER'): return
    from test_notebooks import NOTEBOOKS_DONE
    names = {it.callspec.params['nb'].stem for it in session.items if it.path.name.startswith('test_notebooks') and hasattr(it, 'callspec')}
    def pending(): return [n for n in names if not ((f := NOTEBOOKS_DONE/n).exists() and f.stat().st_mtime >= SESSION_START - 60)]
    t0 = time.time()
    while pending() and time.time() - t0 < timeout: time.sleep(2)


@pytest.fixture(scope='module', params=list(FAMILIES))
def fam(request):
    "Each family in turn (a test module's tests run for all of them)."
    return FAMILIES[request.param]

@pytest.fixture(scope='module')
def tiny(fam):
    "The family's tiny random model in float32 and eval mode, and its processor (a module may define its own `tiny`)."
    model, processor = fam.tiny()
    return model.float().eval(), processor

@pytest.fixture(scope='module')
def browser():
    "Headless Chromium (tests/chromium.py) for the tests that look at pages as a reader does; skipped where there is none."
    from chromium import CHROMIUM, Chromium
    if CHROMIUM is None: pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    b = Chromium()
    yield b
    b.close()
