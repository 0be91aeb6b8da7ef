"""Build the documentation site offline, in pure Python: `python scripts/build_docs.py`.

Quarto (what `nbdev-docs` renders with) cannot be installed on machines without its binary download, so this
renders the same nbdev-processed notebooks with smalldocs into `_docs/` (sidebar, API reference, search).
With Quarto installed, `nbdev-docs` works on the same `nbs/` unchanged.

Notebook outputs come from `_build/executed/` (written by the notebook tests); a notebook not executed yet is
run here first. `#| gpu` and `#| slow` cells are never executed by the docs build: they are marked
`#| eval: false` in the staged copy, so nbdev's doc processors leave them alone too.

The site works opened from files (`file://`): API cross-references are relative links to this build's pages, and
search reads its index from `search.js` where the browser refuses to fetch `search.json` from a file.
"""
import os, re, json, shutil, sys, argparse, importlib.util
from pathlib import Path

# Progress bars of loads and saves inside notebook cells are noise in the pages (huggingface_hub's documented
# switch, which transformers reads when imported); a user's own session keeps them.
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
from fastcore.nbio import write_nb
from nbdev.process import NBProcessor

ROOT = Path(__file__).resolve().parents[1]
NBS, BUILD = ROOT/'nbs', ROOT/'_build'
STAGE, EXECUTED, OUT = BUILD/'docsrc', BUILD/'executed', ROOT/'_docs'
NEVER_EXEC = {'gpu', 'slow'}

def _notebook_runner():
    spec = importlib.util.spec_from_file_location('nbtests', ROOT/'tests'/'test_notebooks.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def _needs_no_rerun(cell) -> bool:
    "A cell whose outputs are already in the executed notebook: anything but exports and pure-import cells."
    import ast
    flags = cell.directives_.keys()
    if flags & NEVER_EXEC: return True
    if flags & {'export', 'exports', 'exporti'}: return False
    stmts = cell.parsed_()  # nbdev's parse of the top-level statements: directives and magics already handled
    if stmts is None: return True
    return any(not isinstance(n, (ast.Import, ast.ImportFrom)) for n in stmts)

def mark_unexecutable(nb):
    """Prefix `#| eval: false` to the cells nbdev's doc processors must not run again: gpu/slow cells (never
    executed by the docs build) and example cells, whose outputs the executed notebook already holds (nbdev
    re-runs any cell that contains an import, which would run an example without the cells before it)."""
    for cell in nb.cells:
        if cell.cell_type == 'code' and _needs_no_rerun(cell) and '#| eval: false' not in cell.source:
            cell.source = '#| eval: false\n' + cell.source
    return nb

def stage(execute_missing=True):
    "Copy `nbs/` into the staging folder, notebooks replaced by their executed versions."
    if STAGE.exists(): shutil.rmtree(STAGE)
    shutil.copytree(NBS, STAGE, ignore=shutil.ignore_patterns('*.ipynb', '.ipynb_checkpoints'))
    runner = None
    for src in sorted(NBS.glob('*.ipynb')):
        done = EXECUTED/src.name
        if not done.exists() or done.stat().st_mtime < src.stat().st_mtime:
            if not execute_missing: done = src
            else:
                runner = runner or _notebook_runner()
                print(f'executing {src.name} (no fresh executed copy)')
                runner.run_notebook(src, sorted(NEVER_EXEC), [], done)
        write_nb(mark_unexecutable(NBProcessor(done, rm_directives=False, process=True).nb), STAGE/src.name)

def local_links(cache:Path, nbs=NBS) -> int:
    """Point the API cross-references nbdev wrote at this build's own pages, relative (`02_video.html#sym`), in every
    processed notebook of `cache`. nbdev writes them absolute, under its doc host and its page names (the notebook's
    name without its number, as its Quarto build names pages); this build names a page after its notebook. A private
    name (`_scratch`) has no API entry to point at, so its mention stays plain code. Returns the links rewritten."""
    from urllib.parse import urljoin
    from nbdev.config import get_config, nbpath2html
    cfg = get_config()
    base = urljoin(urljoin(cfg.doc_host + '/', cfg.doc_baseurl) + '/', 'x.html')[:-len('x.html')]  # as nbdev joins them
    pages = {nbpath2html(nb.relative_to(nbs)).as_posix(): nb.relative_to(nbs).with_suffix('.html').as_posix()
             for nb in nbs.glob('*.ipynb')}
    link = re.compile(r'(?<=[("])' + re.escape(base) + r'([\w/.-]+\.html)(?=[#)"\\])')
    private = re.compile(r'\[(`[^`\]]+`)\]\(' + re.escape(base) + r'[\w/.-]+\.html#_[^)]*\)')
    n = 0
    def local(m):
        nonlocal n
        if m.group(1) not in pages: return m.group(0)  # not a page of ours: the site's link check reports it
        n += 1
        return pages[m.group(1)]
    for f in cache.glob('*.ipynb'):
        text = f.read_text(encoding='utf-8')
        new = link.sub(local, private.sub(r'\1', text))
        if new != text: f.write_text(new, encoding='utf-8')
    return n

SEARCH_FROM_FILES = r"""<script>
// Search on a site opened from files: browsers refuse fetch() of search.json from file://, so the index is also
// shipped as search.js (a script, which file:// pages may load), handed to the search code as fetch's answer.
(() => {
  if (location.protocol !== "file:") return;
  const fetch0 = window.fetch.bind(window);
  window.fetch = (url, ...rest) => {
    const u = String(url instanceof Request ? url.url : url);
    if (!/(^|\/)search\.json$/.test(u)) return fetch0(url, ...rest);
    const answer = () => new Response(JSON.stringify(window.vlmkitSearchIndex), {headers: {"Content-Type": "application/json"}});
    if (window.vlmkitSearchIndex) return Promise.resolve(answer());
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = u.replace(/search\.json$/, "search.js");
      s.onload = () => window.vlmkitSearchIndex ? resolve(answer()) : reject(new TypeError("search.js set no index"));
      s.onerror = () => reject(new TypeError("search.js did not load"));
      document.head.appendChild(s);
    });
  };
})();
</script>"""

def stage_config(stage_dir=STAGE):
    """Site settings of the staged copy: every page gets the script that lets search work from `file://` (a header
    include in `_quarto.yml`), and a `site-url` that is no URL (nbdev writes `/` where pyproject names no
    Documentation host) is dropped, so no sitemap lists pages under a host that does not exist."""
    import yaml
    qy, ny = stage_dir/'_quarto.yml', stage_dir/'nbdev.yml'
    cfg = yaml.safe_load(qy.read_text()) or {}
    fmt = cfg.setdefault('format', {}).setdefault('html', {})
    inc = fmt.get('include-in-header') or []
    fmt['include-in-header'] = [*(inc if isinstance(inc, list) else [inc]), {'text': SEARCH_FROM_FILES}]
    qy.write_text(yaml.safe_dump(cfg, sort_keys=False))
    meta = yaml.safe_load(ny.read_text()) or {}
    if not re.match(r'https?://', str(meta.get('website', {}).get('site-url', ''))):
        meta.get('website', {}).pop('site-url', None)
        ny.write_text(yaml.safe_dump(meta, sort_keys=False))

def write_search_script(site:Path):
    "`search.js`: the site's `search.json` as a script that sets `window.vlmkitSearchIndex`."
    entries = json.loads((site/'search.json').read_text(encoding='utf-8'))
    (site/'search.js').write_text('window.vlmkitSearchIndex = ' + json.dumps(entries) + ';\n', encoding='utf-8')

def build(execute_missing=True):
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.serve import proc_nbs
    from nbdev.doclinks import _build_modidx
    os.chdir(ROOT)
    refresh_quarto_yml()
    nbdev_sidebar.__wrapped__(path=NBS)
    _build_modidx()
    stage(execute_missing)
    stage_config()
    cache = proc_nbs(str(STAGE), n_workers=0, force=True)
    print(f'{local_links(cache)} API cross-references point at this build\'s pages')
    from smalldocs.site import build as smalldocs_build
    site = smalldocs_build(str(cache), quiet=True)
    for w in site.warnings: print(f'warning: {w}', file=sys.stderr)
    built = cache/'_docs'
    if OUT.exists(): shutil.rmtree(OUT)
    shutil.move(str(built), str(OUT))
    write_search_script(OUT)
    print(f'docs site written to {OUT}')
    return OUT

def readme_text(nb_path=NBS/'index.ipynb'):
    "README.md from the index notebook: its prose and code as written (outputs live in the docs site)."
    from nbdev.process import NBProcessor
    nb = NBProcessor(nb_path, rm_directives=False, process=True).nb
    parts = ['<!-- Generated from nbs/index.ipynb by `python scripts/build_docs.py --readme`: edit the notebook. -->']
    for cell in nb.cells:
        d = getattr(cell, 'directives_', {}) or {}
        if cell.cell_type == 'markdown': parts.append(cell.source.strip())
        elif cell.cell_type == 'code' and not ({'hide', 'export', 'exporti', 'default_exp'} & d.keys()):
            src = '\n'.join(l for l in cell.source.splitlines() if not l.startswith('#|')).strip()
            if src: parts.append(f'```python\n{src}\n```')
    text = '\n\n'.join(parts) + '\n'
    return text

def write_readme():
    (ROOT/'README.md').write_text(readme_text())
    print(f'README.md written from nbs/index.ipynb')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--no-execute', action='store_true', help='use notebooks as saved where no executed copy exists')
    p.add_argument('--readme', action='store_true', help='only write README.md from nbs/index.ipynb')
    a = p.parse_args()
    if a.readme: write_readme()
    else: build(execute_missing=not a.no_execute)
