import os
import pytest

# Tests and the notebooks they run load and save tiny checkpoints; their progress bars would only fill the executed
# notebooks (and so the docs pages) with noise. huggingface_hub's documented switch, read by transformers on import.
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
from vlmkit.family import FAMILIES  # after the switch: it may import transformers

def pytest_configure(config):
    config.addinivalue_line('markers', 'docs: checks of the rendered documentation site (run last)')

def pytest_collection_modifyitems(config, items):
    "The docs site is built from the notebooks the notebook tests execute: run its checks last."
    items.sort(key=lambda it: it.get_closest_marker('docs') is not None)


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
