"""The rendered documentation site, checked the way a reader sees it: in headless Chromium.

Builds `_docs/` (scripts/build_docs.py, reusing notebooks the notebook tests already executed), serves it on
127.0.0.1, then visits every sidebar page and checks that it renders, that every internal link resolves
(pages and #anchors) and that every image is actually shown (decoded, non-zero size)."""
import base64, json, os, shutil, socket, subprocess, tempfile, threading, time, importlib.util
from functools import partial
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import urljoin, urlsplit, unquote
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                '--disable-component-update', '--disable-sync', '--disable-quic', '--remote-debugging-port=0']
pytestmark = pytest.mark.docs

@pytest.fixture(scope='module')
def site():
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

class Chromium:
    "A minimal DevTools-protocol client: enough to load a page and evaluate JavaScript in it."
    def __init__(self):
        import websocket
        self.profile = tempfile.mkdtemp(prefix='vlmkit-chromium-')
        self.proc = subprocess.Popen([CHROMIUM, *CHROME_FLAGS, f'--user-data-dir={self.profile}', 'about:blank'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t0 = Path(self.profile)/'DevToolsActivePort', time.time()
        while not port_file.exists() or not port_file.read_text().strip():
            if time.time() - t0 > 60: raise RuntimeError('Chromium did not start within 60 s')
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        import urllib.request
        targets = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json'))
        page = next(t for t in targets if t['type'] == 'page')
        self.ws = websocket.create_connection(page['webSocketDebuggerUrl'], timeout=60)
        self.n = 0
        self.call('Page.enable')

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps(dict(id=self.n, method=method, params=params)))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.n:
                if 'error' in msg: raise RuntimeError(f'{method}: {msg["error"]}')
                return msg['result']

    def load(self, url, timeout=30):
        self.call('Page.navigate', url=url)
        t0 = time.time()
        while self.eval('document.readyState') != 'complete' or not self.eval(
                'Array.from(document.images).every(i => i.complete)'):
            if time.time() - t0 > timeout: raise TimeoutError(url)
            time.sleep(0.05)

    def eval(self, expr):
        r = self.call('Runtime.evaluate', expression=expr, returnByValue=True)
        if 'exceptionDetails' in r: raise RuntimeError(f'{expr}: {r["exceptionDetails"]}')
        return r['result'].get('value')

    def screenshot(self, path):
        Path(path).write_bytes(base64.b64decode(self.call('Page.captureScreenshot')['data']))

    def close(self):
        try: self.ws.close()
        finally:
            self.proc.terminate(); self.proc.wait(10)
            shutil.rmtree(self.profile, ignore_errors=True)

@pytest.fixture(scope='module')
def browser():
    if CHROMIUM is None: pytest.skip('no chromium on PATH (.ci/run installs Debian\'s chromium)')
    b = Chromium()
    yield b
    b.close()

PAGE_FACTS = """(() => ({
  title: document.title,
  main: (document.querySelector('main') || document.body).innerText.length,
  sidebar: Array.from(document.querySelectorAll('#quarto-sidebar a.sidebar-link')).map(a => a.href),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  images: Array.from(document.images).map(i => ({src: i.src, shown: i.complete && i.naturalWidth > 0 && i.naturalHeight > 0})),
}))()"""

def test_every_sidebar_page_renders_with_links_and_images(site, browser):
    out, base = site
    browser.load(base + 'index.html')
    pages = list(dict.fromkeys(browser.eval(PAGE_FACTS)['sidebar']))
    nbs = sorted(p.stem for p in (ROOT/'nbs').glob('*.ipynb'))
    assert len(pages) == len(nbs), (pages, nbs)
    facts, problems = {}, []
    for url in pages:
        browser.load(url)
        f = facts[url.split('#')[0]] = browser.eval(PAGE_FACTS)
        if f['main'] < 200: problems.append(f'{url}: page body nearly empty ({f["main"]} chars)')
        problems += [f'{url}: image not shown: {i["src"]}' for i in f['images'] if not i['shown']]
    for url, f in facts.items():
        for link in f['links']:
            if not link.startswith(base): continue
            target, _, anchor = link.partition('#')
            path = out/unquote(urlsplit(target).path).lstrip('/')
            if path.is_dir(): path = path/'index.html'
            if not path.exists(): problems.append(f'{url}: broken link {link}'); continue
            if anchor and target.endswith('.html') and target in facts and anchor not in facts[target]['ids']:
                problems.append(f'{url}: missing anchor {link}')
    print('pages checked:', *[p.removeprefix(base) for p in facts], sep='\n  ')
    assert not problems, '\n'.join(problems)

def test_search_index_lists_every_page(site):
    out, _ = site
    entries = json.loads((out/'search.json').read_text())
    hrefs = {e['href'].split('#')[0] for e in entries}
    for nb in (ROOT/'nbs').glob('*.ipynb'):
        assert f'{nb.stem}.html' in hrefs, f'{nb.stem} missing from search.json'
