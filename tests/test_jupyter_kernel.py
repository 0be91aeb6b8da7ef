"""Interactive use: the index notebook (the tour) runs through a real Jupyter kernel via nbclient, as it does in
JupyterLab, not only through nbdev's in-process runner, and its widgets construct without error."""
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parents[1]
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'

def _execute(nb_path):
    from nbclient import NotebookClient
    nb = nbformat.read(nb_path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(nb_path.parent)}},
                   store_widget_state=True).execute()
    return nb

def test_index_runs_in_a_jupyter_kernel_and_builds_widgets():
    nb = _execute(ROOT/'nbs'/'index.ipynb')
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    errors = [o for o in outputs if o.output_type == 'error']
    assert not errors, errors
    views = [o for o in outputs if WIDGET_MIME in o.get('data', {})]
    assert views, 'the tour shows no widget'
    state = nb.metadata.get('widgets', {}).get('application/vnd.jupyter.widget-state+json', {}).get('state', {})
    for v in views: assert v['data'][WIDGET_MIME]['model_id'] in state, 'widget model missing from the kernel state'
    images = [o for o in outputs if 'image/png' in o.get('data', {})]
    assert images, 'the tour shows no image'
