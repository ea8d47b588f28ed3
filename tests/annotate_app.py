"""Test helper: ``samtriton annotate`` run as a subprocess on a real server, and a headless
Chromium (Debian's package, through its chromedriver) to drive its page."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

from samtriton.server import free_port, stop_process

CHROMEDRIVER = "/usr/bin/chromedriver"


class App:
    def __init__(self, process, url, log_path, headers=None):
        self.process, self.url, self.log_path = process, url, log_path
        self.headers = dict(headers or {})  # sent with every request (an Authorization, say)

    def request(self, method, path, body=None, raw=None, headers=None):
        """(status, decoded JSON) of one request; ``raw`` bytes go as they are; ``headers``:
        instead of the app's own."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = self.headers if headers is None else headers
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json", **headers}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                return exc.code, json.loads(payload)
            except ValueError:
                return exc.code, {"error": payload.decode(errors="replace")}

    def log(self):
        return self.log_path.read_text()


@contextlib.contextmanager
def running_app(grpc_url, images_dir, out_dir, log_path, *extra, env=None, model="mobilesam", headers=None):
    """``samtriton annotate IMAGES_DIR`` on the server at ``grpc_url``, answering /health
    (asked with ``headers``)."""
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "samtriton.tools.cli",
            "annotate",
            str(images_dir),
            "--url",
            grpc_url,
            "--model",
            model,
            "--out",
            str(out_dir),
            "--port",
            str(port),
            *map(str, extra),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    app = App(process, f"http://127.0.0.1:{port}", log_path, headers)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"samtriton annotate exited: {log_path.read_text()}")
            try:
                if app.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"samtriton annotate did not answer: {log_path.read_text()}")
            time.sleep(0.2)
        yield app
    finally:
        stop_process(process, 10)
        log.close()


def chromium_missing():
    """Why the browser tests cannot run here, or None."""
    if not os.path.exists(CHROMEDRIVER) or not shutil.which("chromium"):
        return "Debian's chromium and chromium-driver (scripts/test.sh installs them as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def chromium(width=1400, height=900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver, script, timeout=60, what=""):
    """Poll a JS expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script("return " + script)
        if value:
            return value
        time.sleep(0.05)
    status = driver.execute_script("return document.getElementById('status').textContent")
    raise AssertionError(f"timed out waiting for {what or script}; page status: {status!r}")


def _offset(driver, x, y):
    """Selenium offsets (from the canvas centre, CSS pixels) of image pixel (x, y)."""
    rect = driver.execute_script(
        "const r = document.getElementById('prompt-layer').getBoundingClientRect();"
        "return [r.width, r.height, window.annotator.width, window.annotator.height];"
    )
    width, height, image_w, image_h = rect
    return x * width / image_w - width / 2, y * height / image_h - height / 2


def click_image(driver, x, y, background=False):
    """A real mouse click on image pixel (x, y): left (foreground) or right (background)."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "prompt-layer")
    dx, dy = _offset(driver, x, y)
    chain = ActionChains(driver).move_to_element_with_offset(canvas, int(round(dx)), int(round(dy)))
    (chain.context_click() if background else chain.click()).perform()


def drag_box(driver, x0, y0, x1, y1):
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "prompt-layer")
    ax, ay = _offset(driver, x0, y0)
    bx, by = _offset(driver, x1, y1)
    (
        ActionChains(driver)
        .move_to_element_with_offset(canvas, int(round(ax)), int(round(ay)))
        .click_and_hold()
        .move_by_offset(int(round((bx - ax) / 2)), int(round((by - ay) / 2)))
        .move_to_element_with_offset(canvas, int(round(bx)), int(round(by)))
        .release()
        .perform()
    )


def prompt(driver, action, *args, **kwargs):
    """Run a prompt action (``click_image``, ``drag_box``) and wait for the overlay it brings;
    the page's state afterwards."""
    before = driver.execute_script("return window.annotator.rtts.length")
    action(driver, *args, **kwargs)
    wait_for(driver, f"window.annotator.rtts.length > {before} && !window.annotator.busy", what="the mask")
    return driver.execute_script("return window.annotator")
