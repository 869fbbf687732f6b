"""Look at a report as a person would: headless Chromium through chromedriver (a tiny stdlib WebDriver client).

`capture(html)` loads the page, waits for every image, and returns a full-page PNG screenshot, the console errors
(browser log and an in-page collector), and where each plot sits on the page.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 900)
# Flags for a quiet, offline, throwaway browser: no sandbox (root in containers), no GPU, no background traffic.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--force-device-scale-factor=1", "--disable-extensions",
                  "--disable-default-apps", "--mute-audio"]
# Runs before any page script: records uncaught errors, rejected promises and console.error calls.
COLLECTOR = """
window.__decaylabErrors = [];
window.addEventListener('error', function (e) {
  window.__decaylabErrors.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || e.type));
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__decaylabErrors.push('rejection: ' + e.reason); });
(function () { var original = console.error; console.error = function () {
  window.__decaylabErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  return original.apply(console, arguments); }; })();
"""
LAYOUT = """
var images = Array.prototype.slice.call(document.querySelectorAll('img'));
return {
  width: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
  height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
  ratio: window.devicePixelRatio,
  errors: window.__decaylabErrors || [],
  sections: Array.prototype.map.call(document.querySelectorAll('section[id]'), function (s) { return s.id; }),
  images: images.map(function (img) {
    var r = img.getBoundingClientRect();
    return {id: img.closest('figure') ? img.closest('figure').id : '', alt: img.alt, complete: img.complete,
            natural_width: img.naturalWidth, natural_height: img.naturalHeight,
            x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height};
  })
};
"""
IMAGES_READY = """
var images = Array.prototype.slice.call(document.querySelectorAll('img'));
return document.readyState === 'complete' && images.every(function (i) { return i.complete; });
"""


class BrowserUnavailable(RuntimeError):
    """Chromium or chromedriver is not installed (or would not start)."""


@dataclass
class Capture:
    """What the browser saw: a full-page PNG, console errors, the plots' page rectangles (CSS px)."""

    png: bytes
    errors: list[str]
    width: int
    height: int
    ratio: float
    images: list[dict[str, Any]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


def find_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver (env DECAYLAB_CHROMIUM / DECAYLAB_CHROMEDRIVER first)."""
    named = os.environ.get("DECAYLAB_CHROMIUM")
    browser = shutil.which(named) if named else next(
        (found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    named = os.environ.get("DECAYLAB_CHROMEDRIVER")
    driver = shutil.which(named or "chromedriver")
    if not browser or not driver:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p)
        raise BrowserUnavailable(f"{missing} not found (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebDriver:
    """The few W3C WebDriver (and chromedriver CDP) calls a screenshot needs, over urllib."""

    def __init__(self, base: str, timeout: float = 60.0) -> None:
        self.base = base
        self.timeout = timeout
        self.session = ""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; returns `value`, raises RuntimeError with the driver's message on an error."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}").get("value")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise RuntimeError(f"webdriver {method} {path}: HTTP {exc.code}: {detail}") from None

    def s(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A call inside the session."""
        return self.call(method, f"/session/{self.session}{path}", body)

    def script(self, source: str) -> Any:
        return self.s("POST", "/execute/sync", {"script": source, "args": []})

    def cdp(self, command: str, params: dict[str, Any]) -> Any:
        return self.s("POST", "/goog/cdp/execute", {"cmd": command, "params": params})


def _wait_ready(driver: WebDriver, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserUnavailable(f"chromedriver exited with code {process.returncode}")
        try:
            if (driver.call("GET", "/status") or {}).get("ready"):
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.1)
    raise BrowserUnavailable("chromedriver did not become ready in time")


def capture(html: Path, window: tuple[int, int] = WINDOW, timeout: float = 60.0) -> Capture:
    """Load `html` in a fresh headless Chromium profile and capture the whole page."""
    browser, driver_path = find_chromium()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="decaylab-chromium-") as profile:
        process = subprocess.Popen([driver_path, f"--port={port}"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        driver = WebDriver(f"http://127.0.0.1:{port}", timeout)
        try:
            _wait_ready(driver, process, time.monotonic() + timeout)
            options = {"binary": browser, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                                   f"--window-size={window[0]},{window[1]}"]}
            caps = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
            session = driver.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            driver.session = session["sessionId"]
            try:
                return _load_and_shoot(driver, Path(html), window, timeout)
            finally:
                driver.s("DELETE", "")
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _load_and_shoot(driver: WebDriver, html: Path, window: tuple[int, int], timeout: float) -> Capture:
    driver.cdp("Page.addScriptToEvaluateOnNewDocument", {"source": COLLECTOR})
    driver.s("POST", "/url", {"url": html.resolve().as_uri()})
    deadline = time.monotonic() + timeout
    while not driver.script(IMAGES_READY):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{html}: images did not finish loading")
        time.sleep(0.1)
    layout = driver.script(LAYOUT)
    width, height = int(layout["width"]), int(layout["height"])
    shot = driver.cdp("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                 "clip": {"x": 0, "y": 0, "width": max(width, window[0]),
                                                          "height": height, "scale": 1}})
    logs = driver.s("POST", "/se/log", {"type": "browser"}) or []
    errors = [f"{e.get('level')}: {e.get('message')}" for e in logs if e.get("level") == "SEVERE"]
    errors += list(layout.get("errors") or [])
    return Capture(base64.b64decode(shot["data"]), errors, width, height, float(layout.get("ratio") or 1.0),
                   list(layout.get("images") or []), list(layout.get("sections") or []))
