"""The HTML report in a real headless Chromium, driven over the DevTools protocol: every picture renders and
the leaderboard has one row per variant. A full-page screenshot goes to artifacts/report.png for CI."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest

from artefacts import sweep_spec, tiny_model_bytes, write_variant
from helpers import ROOT
from common.report import aggregate
from common.store import FileStore, join

pytestmark = pytest.mark.browser


def chromium() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found:
        return found
    message = "chromium not found: apt-get update && apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)  # CI must run this test, never silently skip it
    pytest.skip(message)


class DevTools:
    """The few DevTools protocol calls the test needs, over one websocket to the page."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive interleaved with answers; keep the answer to this call
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a DevTools port on 127.0.0.1; yields a DevTools connection to its page."""
    profile = tmp_path / "profile"
    proc = subprocess.Popen([
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1400,1000",
        "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        yield devtools
        devtools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_report_renders_in_chromium(tmp_path, browser):
    store = FileStore(str(tmp_path / "store"))
    sweep = sweep_spec([("cnn-a", "cnn"), ("cnn-b", "cnn"), ("mnv3-a", "finetune"), ("mnv3-b", "finetune")])
    model = tiny_model_bytes(tmp_path / "model.keras")
    write_variant(store, sweep, "cnn-a", val_acc=0.62, val_loss=1.1, test_acc=0.58, model=model)
    write_variant(store, sweep, "cnn-b", val_acc=0.55, val_loss=1.3, test_acc=0.61, model=model)
    write_variant(store, sweep, "mnv3-a", val_acc=0.81, val_loss=0.6, test_acc=0.78, model=model)
    write_variant(store, sweep, "mnv3-b", phase="failed", error="Interrupted: received SIGTERM", finished=False)
    aggregate(store, sweep)
    report = store.root / join(sweep.prefix, "report", "report.html")
    pngs = {k.rsplit("/", 1)[1] for k in store.list(join(sweep.prefix, "report")) if k.endswith(".png")}

    browser.call("Page.enable")
    browser.call("Page.navigate", url=report.as_uri())
    deadline = time.monotonic() + 60
    while not browser.evaluate("document.readyState === 'complete' && location.href.startsWith('file:') && "
                               "Array.from(document.images).every(i => i.complete)"):
        if time.monotonic() > deadline:
            pytest.fail("report did not finish loading in 60 s")
        time.sleep(0.2)
    images = browser.evaluate("Array.from(document.images).map(i => [i.dataset.file, i.naturalWidth])")
    rows = browser.evaluate("Array.from(document.querySelectorAll('#leaderboard tbody tr'))"
                            ".map(r => [r.dataset.variant, r.className])")

    assert {name for name, _ in images} == pngs and len(images) == len(pngs)
    assert [name for name, width in images if width <= 0] == []
    assert rows == [["mnv3-a", "best"], ["cnn-a", ""], ["cnn-b", ""], ["mnv3-b", "unfinished"]]

    width = 1400
    height = browser.evaluate("document.documentElement.scrollHeight")
    browser.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    out = ROOT / "artifacts" / "report.png"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    assert out.stat().st_size > 50_000
