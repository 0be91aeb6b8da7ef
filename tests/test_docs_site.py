"""The rendered documentation site, checked the way a reader sees it: in headless Chromium.

Builds `_docs/` (scripts/build_docs.py, reusing notebooks the notebook tests already executed), serves it on
127.0.0.1, then visits every sidebar page and checks that it renders, that every internal link resolves
(pages and #anchors, and links to the project's own doc host, which must be pages of this build), that every image
is actually shown (decoded, non-zero size) and that no page text leaks what a reader should not see (widget reprs,
the build machine's paths, raw Markdown fences, progress bars, `NoneType` signatures, `.html.md` links). Search is
checked on the site opened from files (`file://`), as a reader who opens `_docs/index.html` gets it."""
import json, os, re, threading, importlib.util
from functools import partial
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit, unquote
import pytest
from conftest import wait_for_notebooks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.docs

@pytest.fixture(scope='module')
def site(request):
    wait_for_notebooks(request.session)   # the build reuses the notebooks the notebook tests executed
    spec = importlib.util.spec_from_file_location('build_docs', ROOT/'scripts'/'build_docs.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    cwd = os.getcwd()
    try: out = mod.build()
    finally: os.chdir(cwd)
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    srv = ThreadingHTTPServer(('127.0.0.1', 0), partial(Quiet, directory=str(out)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield out, f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown()

PAGE_FACTS = """(() => ({
  title: document.title,
  main: (document.querySelector('main') || document.body).innerText.length,
  sidebar: Array.from(document.querySelectorAll('#quarto-sidebar a.sidebar-link')).map(a => a.href),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  images: Array.from(document.images).map(i => ({src: i.src, shown: i.complete && i.naturalWidth > 0 && i.naturalHeight > 0})),
  hrefs: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
  // what a reader reads: the page body without the code cells' source (code may rightly build widgets or name /tmp)
  text: (() => { const m = (document.querySelector('main') || document.body).cloneNode(true);
                 m.querySelectorAll('pre.cell-code, script, style').forEach(e => e.remove()); return m.textContent; })(),
  // what was rendered from Markdown (prose, API docs): no program output shown verbatim, no inline code spans
  markdown: (() => { const m = (document.querySelector('main') || document.body).cloneNode(true);
                     m.querySelectorAll('pre.cell-code, script, style, .cell-output:not(.cell-output-markdown), :not(pre) > code')
                      .forEach(e => e.remove()); return m.textContent; })(),
}))()"""

def own_doc_bases() -> set[str]:
    """Where the project's docs are or would be hosted: its configured doc URL (pyproject's Documentation, which
    nbdev links under) and GitHub Pages of its repository (nbdev's default). Links there must be pages of this build."""
    from nbdev.config import get_config
    cfg, bases = get_config(ROOT), set()
    if cfg.doc_host: bases.add('/'.join(filter(None, [cfg.doc_host.rstrip('/'), cfg.doc_baseurl.strip('/')])) + '/')
    user, _, repo = urlsplit(cfg.git_url).path.strip('/').partition('/')
    if user and repo: bases.add(f'https://{user.lower()}.github.io/{repo}/')
    return bases

def local_target(link:str, base:str, doc_bases) -> str|None:
    "The local URL `link` stands for: itself under the served site, mapped onto the site under the doc host, else None."
    if link.startswith(base): return link
    for b in doc_bases:
        if link.startswith(b): return base + link[len(b):]
    return None

LEAKS = {  # what must never reach a page's text: the kind, and how to spot it
    'widget repr': re.compile(r'\b(?:VBox|HBox|GridBox|Box|Tab|Accordion|IntSlider|FloatSlider|IntRangeSlider|'
                              r'FloatRangeSlider|SelectionSlider|Dropdown|Checkbox|FileUpload|ToggleButtons?|Button|Output|'
                              r'Play|Textarea|Text|HTMLMath|HTML|Image|Label|Layout)\((?:children|value|description|options|'
                              r'layout|format|min|max|accept|_dom_classes)='),
    'absolute path': re.compile('|'.join([r'(?<![\w.~:/-])/(?:work|tmp|root|home|Users)/', re.escape(str(ROOT))])),
    'raw fence': re.compile(r'```'),
    'progress bar': re.compile(r'(?:it/s|s/it)\]|\d%\||Loading weights|Writing model shards'),
    'NoneType': re.compile(r'\w\s*:\s*NoneType\b'),  # an annotation nobody wrote: `size:NoneType=None`
    '.html.md': re.compile(r'\.html\.md\b'),
}

def find_leaks(text:str, hrefs=(), markdown:str|None=None) -> list[tuple[str, str]]:
    """Each leak in a page: `(kind, the text around it)`. A fence leaks where Markdown was rendered (`markdown`, the
    text without program output and inline code, which may rightly show one); `.html.md` is looked for in links too."""
    found = []
    for kind, pat in LEAKS.items():
        where = markdown if kind == 'raw fence' and markdown is not None else text
        for m in pat.finditer(where):
            found.append((kind, ' '.join(where[max(0, m.start() - 40):m.end() + 40].split())))
    found += [('.html.md', h) for h in hrefs if LEAKS['.html.md'].search(h)]
    return found

@pytest.fixture(scope='module')
def pages(site, browser) -> dict:
    "`PAGE_FACTS` of every page the index's sidebar links to, each page loaded once: `{url: facts}` in sidebar order."
    _, base = site
    browser.load(base + 'index.html')
    facts = {}
    for url in dict.fromkeys(browser.eval(PAGE_FACTS)['sidebar']):
        browser.load(url)
        facts[url.split('#')[0]] = browser.eval(PAGE_FACTS)
    return facts

def test_every_sidebar_page_renders_with_links_and_images(site, pages):
    out, base = site
    nbs = sorted(p.stem for p in (ROOT/'nbs').glob('*.ipynb'))
    assert len(pages) == len(nbs), (list(pages), nbs)
    facts, problems, doc_bases, n_doc_host = pages, [], own_doc_bases(), 0
    assert doc_bases, 'no doc host to check links against'
    for url, f in facts.items():
        if f['main'] < 200: problems.append(f'{url}: page body nearly empty ({f["main"]} chars)')
        problems += [f'{url}: image not shown: {i["src"]}' for i in f['images'] if not i['shown']]
    for url, f in facts.items():
        for link in f['links']:
            local = local_target(link, base, doc_bases)
            if local is None: continue
            if local != link: n_doc_host += 1; problems.append(f'{url}: link to the doc host, not to this build: {link}')
            target, _, anchor = local.partition('#')
            path = out/unquote(urlsplit(target).path).lstrip('/')
            if path.is_dir(): path = path/'index.html'
            if not path.exists(): problems.append(f'{url}: broken link {link}'); continue
            if anchor and target.endswith('.html') and target in facts and anchor not in facts[target]['ids']:
                problems.append(f'{url}: missing anchor {link}')
    n_local = sum(local_target(l, base, doc_bases) is not None for f in facts.values() for l in f['links'])
    print(f'{len(facts)} pages, {n_local} links into the site checked ({n_doc_host} to the doc host {sorted(doc_bases)})')
    print('pages checked:', *[p.removeprefix(base) for p in facts], sep='\n  ')
    assert not problems, '\n'.join(problems)

def test_pages_show_no_leaks(site, pages):
    "No page's text shows a widget repr, a path of the build machine, a raw fence, a progress bar, `NoneType` or `.html.md`."
    out, base = site
    leaks = {}
    for url, f in pages.items():
        assert len(f['text']) > 200, url
        for kind, where in find_leaks(f['text'], f['hrefs'], f['markdown']): leaks.setdefault(url.removeprefix(base), []).append((kind, where))
    counts = {}
    for page in leaks.values():
        for kind, _ in page: counts[kind] = counts.get(kind, 0) + 1
    print(f'{len(pages)} pages scanned; leaks by kind: {counts or "none"}')
    assert not leaks, '\n'.join(f'{p}: {k}: ...{w}...' for p, l in leaks.items() for k, w in l)

SYNTHETIC_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>leaks</title></head><body><main>
<p>Prose that is fine: Qwen writes <code>```json</code> fences around <code>[x1, y1, x2, y2]</code>; {prose}</p>
<div class="cell"><div class="sourceCode"><pre class="sourceCode python cell-code"><code>w = W.VBox([W.HBox([W.IntSlider(value=3)])])
open('/tmp/x.png'); s = '```json'</code></pre></div>
<div class="cell-output cell-output-stdout"><pre><code>```json\n[{{"bbox_2d": [1, 2, 3, 4]}}]\n```</code></pre></div>
<div class="cell-output cell-output-display"><pre><code>{output}</code></pre></div>
<div class="cell-output cell-output-display cell-output-markdown"><p>{api}</p></div></div>
{links}</main></body></html>"""

LEAKY = dict(  # one sample of each kind of leak, as it reached pages
    prose=f'see the file {ROOT}/nbs/x.ipynb and <a href="boxes.html.md">the Markdown</a>',
    api='Example:</p><pre><code>```python\n&gt;&gt;&gt; out = self.layer(hidden_states)\n```</code></pre><p>',
    output="VBox(children=(HBox(children=(Dropdown(description='image'),)),))\n/work/repo/_build/x.png\n"
           "Loading weights: 100%|##########| 66/66 [00:00&lt;00:00, 1597.18it/s]\n"
           "def convert_boxes(boxes, size:NoneType=None)\nDocs: https://vlmkit.github.io/vlmkit/boxes.html.md",
    links='<a href="https://vlmkit.github.io/vlmkit/tour.html.md">Docs</a>')

def test_leak_detector_catches_each_kind(browser, tmp_path):
    "The leak check on a synthetic page, loaded as the site's pages are: every kind is caught, code cells are not read."
    leaky, clean = tmp_path/'leaky.html', tmp_path/'clean.html'
    leaky.write_text(SYNTHETIC_PAGE.format(**LEAKY))
    clean.write_text(SYNTHETIC_PAGE.format(prose='nothing else.', output='TilePlan(cols=4, rows=3)', api='Docs.', links=''))
    browser.load(leaky.as_uri())
    f = browser.eval(PAGE_FACTS)
    kinds = [k for k, _ in find_leaks(f['text'], f['hrefs'], f['markdown'])]
    assert set(kinds) == set(LEAKS), (set(LEAKS) - set(kinds), kinds)
    # the code cell's /tmp is not read; the fences are the API docs' two, not the printed output's or inline code's
    assert (kinds.count('absolute path'), kinds.count('.html.md'), kinds.count('raw fence')) == (2, 3, 2), kinds
    assert kinds.count('raw fence') < len(LEAKS['raw fence'].findall(f['text'])), 'fences outside Markdown were read'
    browser.load(clean.as_uri())
    f = browser.eval(PAGE_FACTS)
    assert 'W.VBox' not in f['text'] and find_leaks(f['text'], f['hrefs'], f['markdown']) == []
    for kind, text in [('progress bar', 'Writing model shards: 100%|#| 1/1 [00:00<00:00,  5.44it/s]'),
                       ('absolute path', 'saved to /root/.cache/x'), ('widget repr', 'IntSlider(value=12, description=...)')]:
        assert kind in [k for k, _ in find_leaks(text)], kind
    for fine in ['https://example.com/tmp/x', '~/work/x', 'a 90% | b', "TypeError: 'NoneType' object", 'page.html',
                 'Image.open(p)', 'size=None']:
        assert find_leaks(fine) == [], fine

def test_doc_host_links_map_onto_this_build():
    "A link under the project's doc host is checked as the page of this build it names; other sites are not ours."
    bases = own_doc_bases()
    assert 'https://vlmkit.github.io/vlmkit/' in bases, bases
    b = 'http://127.0.0.1:1/'
    assert local_target('https://vlmkit.github.io/vlmkit/video.html#x', b, bases) == b + 'video.html#x'
    assert local_target(b + '02_video.html', b, bases) == b + '02_video.html'
    assert local_target('https://pytorch.org/docs/index.html', b, bases) is None

SEARCH = """(async (q) => {
  const box = document.querySelector('.smalldocs-search'), input = box.querySelector('input');
  const old = box.querySelector('.smalldocs-search-results');
  old.innerHTML = ''; old.classList.remove('show');  // the last query's answer is not this one's
  input.focus(); input.value = q; input.dispatchEvent(new Event('input'));
  for (let i = 0; i < 100; i++) {
    await new Promise(r => setTimeout(r, 50));
    const res = box.querySelector('.smalldocs-search-results');
    if (res && res.classList.contains('show') && res.innerText.trim())
      return {none: !!res.querySelector('.search-none'), hrefs: Array.from(res.querySelectorAll('a.search-result')).map(a => a.href)};
  }
  return null;
})"""

@pytest.mark.parametrize('page', ['index.html', '20_internvl_tiling.html'])
def test_search_works_from_files(site, browser, page):
    "Opened as files (no server), search finds pages and its results open pages that exist."
    out, _ = site
    browser.load((out/page).as_uri())
    assert browser.eval('location.protocol') == 'file:'
    for q, expect in [('plan_tiles', '20_internvl_tiling.html'), ('fixtures_dir', '03_testing.html')]:
        r = browser.call('Runtime.evaluate', expression=f'{SEARCH}({json.dumps(q)})', awaitPromise=True, returnByValue=True)
        res = r['result'].get('value')
        assert res and not res['none'] and res['hrefs'], (q, res)
        targets = [Path(unquote(urlsplit(h).path)) for h in res['hrefs']]
        assert all(t.exists() for t in targets), [str(t) for t in targets if not t.exists()]
        assert any(t.name == expect for t in targets), (q, [t.name for t in targets])
    r = browser.call('Runtime.evaluate', expression=f'{SEARCH}("zzqqxxjj")', awaitPromise=True, returnByValue=True)
    assert r['result']['value']['none'], 'a query that matches nothing says so'

def _public_classes():
    import importlib, inspect
    from vlmkit._modidx import d
    for mod in sorted(d['syms']):
        m = importlib.import_module(mod)
        for name in getattr(m, '__all__', []):
            o = getattr(m, name)
            if inspect.isclass(o) and o.__module__ == mod: yield f'{mod}.{name}', o

def test_public_classes_have_their_own_docstrings():
    "A class without one would show its base class's (transformers' raw Markdown) in the API docs."
    classes = dict(_public_classes())
    assert len(classes) > 20
    assert not [n for n, c in classes.items() if not c.__dict__.get('__doc__')]

def test_module_docstrings_cite_no_missing_pages():
    "A module's docstring names no `.html.md` page, nor a doc host page this build does not have."
    import ast
    bases, pages = own_doc_bases(), {p.stem + '.html' for p in (ROOT/'nbs').glob('*.ipynb')}
    for f in sorted((ROOT/'vlmkit').rglob('*.py')):
        doc = ast.get_docstring(ast.parse(f.read_text())) or ''
        assert '.html.md' not in doc, f
        for url in re.findall(r'https?://\S+', doc):
            base = next((b for b in bases if url.startswith(b)), None)
            assert base is None or url[len(base):].split('#')[0] in pages, (f, url)

def test_search_index_lists_every_page(site):
    out, _ = site
    entries = json.loads((out/'search.json').read_text())
    hrefs = {e['href'].split('#')[0] for e in entries}
    for nb in (ROOT/'nbs').glob('*.ipynb'):
        assert f'{nb.stem}.html' in hrefs, f'{nb.stem} missing from search.json'
