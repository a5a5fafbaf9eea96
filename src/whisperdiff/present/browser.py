"""Look at a report the way a person does: headless Chromium, driven over the DevTools protocol.

The protocol runs over a pipe (`--remote-debugging-pipe`: commands on fd 3, replies on fd 4, each
a JSON message ended by NUL), so this needs no network port, no websocket library and no driver
binary, only Debian's `chromium`. Used by `whisperdiff report --screenshot`, the report tests and
benchmarks/report.py.

    with Browser() as browser:
        page = browser.open("reports/clean.html", screenshot="clean.png")
        page.text, page.images, page.dialogs, page.load_seconds
"""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from whisperdiff.errors import WhisperdiffError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in (os.environ.get("WHISPERDIFF_CHROMIUM"), *CANDIDATES):
        if name and (found := shutil.which(name)):
            return found
    return None


@dataclass
class Page:
    url: str
    title: str
    text: str  # document.body.innerText: what a reader sees
    images: list[dict]  # each <img>: alt, loaded (decoded with a size), width, height
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages: any means script ran
    console: list[str] = field(default_factory=list)  # CSP violations and other console errors
    load_seconds: float = 0.0  # navigation start to the load event, as the browser measured it
    scripts_ran: bool = False  # did any inline script execute (the CSP should forbid it)
    scroll_width: int = 0  # the page's full width in CSS px: more than the window means a sideways scrollbar
    height: int = 0  # the page's full height in CSS px (a screenshot shows all of it)

    @property
    def broken_images(self) -> list[str]:
        return [i["alt"] for i in self.images if not i["loaded"]]


class Browser:
    """One headless Chromium process; `open` pages in it one after another."""

    def __init__(self, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        exe = find_chromium()
        if exe is None:
            raise WhisperdiffError(
                "no Chromium found; install it (Debian: apt-get install chromium) or set WHISPERDIFF_CHROMIUM"
            )
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="whisperdiff-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_fds():  # in the child: the protocol's fixed descriptors 3 (in) and 4 (out)
            # Move both above 4 first: dup2 onto its own number would keep close-on-exec.
            r, w = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        args = [
            exe,
            "--headless",
            "--remote-debugging-pipe",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds,
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []

    # -- protocol ---------------------------------------------------------------------------------
    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_child, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise WhisperdiffError(
                "Chromium exited unexpectedly; try `chromium --headless about:blank` to see why"
            ) from None
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise WhisperdiffError(f"Chromium: {method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._events.append(reply)

    def _receive(self, deadline: float | None = None) -> dict:
        deadline = deadline or time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise WhisperdiffError("Chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise WhisperdiffError("Chromium exited unexpectedly")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method and event.get("sessionId") == session:
                    del self._events[i]
                    return
            event = self._receive(deadline)
            self._events.append(event)
            if event.get("method") == "Page.javascriptDialogOpening":  # an alert() blocks loading: dismiss it
                self._send("Page.handleJavaScriptDialog", {"accept": True}, event.get("sessionId"))

    # -- pages ------------------------------------------------------------------------------------
    def open(self, path: str | Path, screenshot: str | Path | None = None) -> Page:
        """Load a local HTML file, wait for its load event, and read what it shows."""
        url = Path(path).resolve().as_uri()
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log"):
                self._send(f"{domain}.enable", session=session)
            self._send(
                "Emulation.setDeviceMetricsOverride",
                {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            self._send("Page.navigate", {"url": url}, session)
            self._wait_for("Page.loadEventFired", session)
            state = self._evaluate(session, _READ_PAGE)
            if screenshot is not None:
                self._screenshot(session, Path(screenshot))
            dialogs = [
                e["params"].get("message", "")
                for e in self._events
                if e.get("method") == "Page.javascriptDialogOpening" and e.get("sessionId") == session
            ]
            console = [
                e["params"]["entry"].get("text", "")
                for e in self._events
                if e.get("method") == "Log.entryAdded" and e.get("sessionId") == session
            ]
            return Page(
                url,
                state["title"],
                state["text"],
                state["images"],
                dialogs,
                console,
                state["load_ms"] / 1000,
                state["scripts_ran"],
                state["scroll_width"],
                state["height"],
            )
        finally:
            self._events = [e for e in self._events if e.get("sessionId") != session]
            self._send("Target.closeTarget", {"targetId": target})

    def _evaluate(self, session: str, expression: str):
        result = self._send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session
        )
        if "exceptionDetails" in result:
            raise WhisperdiffError(f"Chromium: page evaluation failed: {result['exceptionDetails'].get('text')}")
        return result["result"]["value"]

    def _screenshot(self, session: str, path: Path) -> None:
        """The whole page, top to bottom, not only the window (capped at 16000 px tall): the window is
        grown to the page's height first, so nothing sized to the window cuts content off."""
        size = self._send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        height = int(min(math.ceil(size["height"]), 16000))
        self._send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": max(height, self.height), "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        size = self._send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        height = int(min(math.ceil(size["height"]), 16000))
        clip = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}
        shot = self._send(
            "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}, session
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Runs in the page through DevTools (allowed even where the page's own CSP forbids scripts).
# Waits for every image to decode, then reports what a reader would see.
_READ_PAGE = """
(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const nav = performance.getEntriesByType('navigation')[0];
  return {
    title: document.title,
    text: document.body ? document.body.innerText : '',
    images: imgs.map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                            width: i.naturalWidth, height: i.naturalHeight})),
    load_ms: nav ? nav.loadEventEnd - nav.startTime : -1,
    scripts_ran: window.__whisperdiff_script_ran === true,
    scroll_width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
  };
})()
"""
