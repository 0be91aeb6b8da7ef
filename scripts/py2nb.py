"""Write a notebook from a percent-format script: `python scripts/py2nb.py src.py nbs/NN_name.ipynb`.

Cells start at lines `# %%` (code) or `# %% [markdown]` (markdown; each line's leading `# ` is stripped).
Handy for drafting a notebook in an editor; the notebook stays the source of truth.
"""
import sys, re, nbformat

def cells_from_percent(text):
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        src = '\n'.join(buf).strip('\n')
        if kind == 'markdown': src = '\n'.join(re.sub(r'^# ?', '', l) for l in src.splitlines())
        if src.strip(): cells.append(nbformat.v4.new_markdown_cell(src) if kind == 'markdown' else nbformat.v4.new_code_cell(src))
    for line in text.splitlines():
        m = re.match(r'^# %%( \[markdown\])?\s*$', line)
        if m: flush(); kind, buf = ('markdown' if m.group(1) else 'code'), []
        else: buf.append(line)
    flush()
    return cells

if __name__ == '__main__':
    src, dst = sys.argv[1:3]
    nb = nbformat.v4.new_notebook(cells=cells_from_percent(open(src).read()))
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    nbformat.write(nb, dst)
    print(f'wrote {dst} ({len(nb.cells)} cells)')
