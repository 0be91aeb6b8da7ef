"""The notebooks of training, evaluation, the apps and the index, each a test (tests/test_notebooks.py runs the others
and says how): a file of their own, so that the two halves run on the two workers of `pytest -n 2 --dist loadfile`."""
import pytest
from test_notebooks import LATER, check_notebook

@pytest.mark.parametrize('nb', LATER, ids=[p.stem for p in LATER])
def test_notebook(nb): check_notebook(nb)

def test_every_notebook_is_tested():
    from test_notebooks import FIRST, NBS
    assert sorted(FIRST + LATER) == NBS and not set(FIRST) & set(LATER)
