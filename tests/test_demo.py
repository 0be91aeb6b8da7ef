"""The web demo as a user meets it, in headless Chromium: `vlmkit.demo` serving a tiny Qwen2.5-VL on 127.0.0.1; the test
uploads an image through the page's file input, submits, and waits for the answer and the drawn image; then a path that
does not exist, whose error the page shows. The page's answer must be the one the app gives for the same request. A
scripted model (its text fixed, `vlmkit.rollout.scripted_family`) calls the crop tool, and the page shows the call,
the crop and the answer's box drawn."""
import json, os, threading, urllib.error, urllib.request
from pathlib import Path
import pytest

@pytest.fixture(scope='module')
def served():
    from vlmkit.demo import DemoApp, serve
    from vlmkit.family import FAMILIES
    model, processor = FAMILIES['qwen2_5_vl'].tiny()
    app = DemoApp(model, processor, max_new_tokens=12)
    srv = serve(app, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield app, f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown(); srv.server_close()

def test_the_api_streams_json_lines(served):
    app, base = served
    req = urllib.request.Request(base + 'api/chat', json.dumps({'prompt': 'Say hi.'}).encode(), {'Content-Type': 'application/json'})
    lines = [json.loads(l) for l in urllib.request.urlopen(req, timeout=120).read().decode().splitlines()]
    assert 'reply' in lines[-1] and all('piece' in l for l in lines[:-1]), lines
    assert ''.join(l['piece'] for l in lines[:-1]) == lines[-1]['reply']['text']
    bad = urllib.request.Request(base + 'api/chat', b'{not json', {'Content-Type': 'application/json'})
    with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(bad, timeout=30)
    assert e.value.code == 400 and 'not JSON' in e.value.read().decode()

def test_upload_submit_and_see_the_answer_and_the_drawn_image(served, browser, tmp_path):
    from vlmkit.demo import page_image
    from vlmkit.images import synthetic_image
    app, base = served
    img, _ = synthetic_image(3, (320, 240))
    img.save(tmp_path/'shapes.png')
    browser.load(base)
    assert browser.eval("document.title") == 'vlmkit demo: qwen2_5_vl'
    browser.set_files('#file', [tmp_path/'shapes.png'])
    browser.wait_for("!document.getElementById('preview').hidden && document.getElementById('preview').naturalWidth > 0")
    browser.eval("document.getElementById('prompt').value = 'Where is the circle?'")
    browser.eval("document.getElementById('submit').click()")
    browser.wait_for("document.getElementById('status').textContent === 'done'", timeout=120)
    shown = browser.eval("""(() => { const d = document.getElementById('drawn');
        return {answer: document.getElementById('answer').textContent, boxes: document.getElementById('boxes').textContent,
                error: document.getElementById('error').textContent, drawn: !d.hidden && d.naturalWidth, trajectory:
                document.getElementById('trajectory').textContent}; })()""")
    assert shown['error'] == '' and shown['drawn'] == 320, shown
    expected = list(app.respond({'prompt': 'Where is the circle?', 'image': page_image(img), 'thinking': 'default'}))[-1]['reply']
    assert shown['answer'] == expected['answer'] and shown['boxes'], (shown, expected['answer'])
    assert shown['trajectory'] == '(no tool call)'

def test_the_page_shows_a_clear_error(served, browser):
    app, base = served
    browser.load(base)
    browser.eval("document.getElementById('path').value = 'no/such/image.png'")
    browser.eval("document.getElementById('submit').click()")
    browser.wait_for("document.getElementById('status').textContent === 'done'", timeout=60)
    error = browser.eval("document.getElementById('error').textContent")
    assert 'no/such/image.png' in error and 'not found' in error, error

def test_a_crop_tool_trajectory_shows_the_crop_inline(browser, tmp_path):
    from vlmkit.boxes import convert_boxes, format_boxes
    from vlmkit.chat import prepare
    from vlmkit.demo import DemoApp, serve
    from vlmkit.family import FAMILIES
    from vlmkit.images import synthetic_image
    from vlmkit.rollout import scripted_family, tool_trajectory
    fam = FAMILIES['qwen2_5_vl']
    model, processor = fam.tiny()
    img, objects = synthetic_image(5, (320, 240))
    img.save(tmp_path/'shapes.png')
    question, target = 'Where is the shape? Zoom in first.', objects[0]
    prep = prepare(model, processor, question, images=[img], tools='crop')       # the prompt the page's request becomes
    resized = prep.rendered[0].resized_sizes[0]
    box = convert_boxes([target['box']], 'pixel', fam.syntax.space, img.size, resized)
    call = ', '.join(str(int(round(v))) for v in box[0])
    texts = [f'Let me zoom in. <tool_call>Crop [{call}]</tool_call>', f"It is here: {format_boxes(box, fam.syntax, size=img.size, resized_size=resized)}"]
    traj = tool_trajectory(prep.convs[0], texts, prep.tools, resized_sizes=prep.rendered[0].resized_sizes)
    script = fam.render(traj, processor, training=True).input_ids
    srv = serve(DemoApp(model, processor, scripted_family(fam, [script]), max_new_tokens=200, name='scripted Qwen2.5-VL'), port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        browser.viewport(1280, 1000)
        browser.load(f'http://127.0.0.1:{srv.server_address[1]}/')
        browser.set_files('#file', [tmp_path/'shapes.png'])
        browser.wait_for("document.getElementById('preview').naturalWidth > 0")
        browser.eval(f"document.getElementById('prompt').value = {json.dumps(question)}")
        browser.eval("document.getElementById('crop_tool').checked = true")
        browser.eval("document.getElementById('submit').click()")
        browser.wait_for("document.getElementById('status').textContent === 'done'", timeout=120)
        shown = browser.eval("""(() => ({error: document.getElementById('error').textContent,
            answer: document.getElementById('answer').textContent, boxes: document.getElementById('boxes').textContent,
            steps: Array.from(document.querySelectorAll('#trajectory .step')).map(s => s.className.split(' ')[1]),
            crop: (document.querySelector('#trajectory img') || {}).naturalWidth || 0}))()""")
        assert shown['error'] == '', shown
        assert shown['steps'] == ['text', 'call', 'image', 'text'] and shown['crop'] > 0, shown
        assert shown['answer'].startswith('It is here:') and shown['boxes'].startswith('boxes (pixels): ['), shown
        browser.screenshot(Path(os.environ.get('VLMKIT_DEMO_SCREENSHOT') or tmp_path/'demo.png'))
    finally: srv.shutdown(); srv.server_close()
