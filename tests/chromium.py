"""A minimal headless-Chromium client over the DevTools protocol, for the tests that look at pages as a reader does
(the documentation site, the web demo): load a page, evaluate JavaScript, set a file input, take a screenshot."""
import base64, json, shutil, subprocess, tempfile, time
from pathlib import Path

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                '--disable-component-update', '--disable-sync', '--disable-quic', '--remote-debugging-port=0']
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
        self.ws = websocket.create_connection(page['webSocketDebuggerUrl'], timeout=60, suppress_origin=True)
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

    def set_files(self, selector:str, paths):
        "Choose `paths` in the file input `selector`, as a user picking files does (its change event fires)."
        root = self.call('DOM.getDocument')['root']['nodeId']
        node = self.call('DOM.querySelector', nodeId=root, selector=selector)['nodeId']
        if not node: raise RuntimeError(f'no element matches {selector!r}')
        self.call('DOM.setFileInputFiles', nodeId=node, files=[str(p) for p in paths])

    def viewport(self, width:int, height:int):
        "Lay the page out at `width` x `height` CSS pixels (screenshots take this size)."
        self.call('Emulation.setDeviceMetricsOverride', width=width, height=height, deviceScaleFactor=1, mobile=False)

    def wait_for(self, expr, timeout=60):
        "Poll JavaScript `expr` until it is truthy; its value, or `TimeoutError` naming it."
        t0 = time.time()
        while not (value := self.eval(expr)):
            if time.time() - t0 > timeout: raise TimeoutError(f'{expr} stayed false for {timeout} s')
            time.sleep(0.1)
        return value
