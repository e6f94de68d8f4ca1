"""A real headless Chromium driven over the DevTools protocol (a websocket), for the console tests.

`Browser.start(tmp)` launches Debian's `chromium` with its own profile on a free DevTools port
and attaches to its first page; `goto`, `evaluate`, `wait_until` and `screenshot` are what a
person does: open a URL, read what the page shows, save a picture of it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tornado.websocket import websocket_connect

from tests.waiting import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], ws_url: str) -> None:
        self.proc = proc
        self.loop = asyncio.new_event_loop()

        async def connect() -> Any:
            return await websocket_connect(ws_url, max_message_size=64 << 20)

        self.ws = self.loop.run_until_complete(connect())
        self._id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")

    @classmethod
    def start(cls, profile: Path, width: int = 1280, height: int = 900, javascript: bool = True) -> Browser:
        profile.mkdir(parents=True, exist_ok=True)
        args = [CHROMIUM or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-dev-shm-usage", "--no-default-browser-check", f"--window-size={width},{height}",
                f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
                "about:blank"]
        if not javascript:
            args.insert(1, "--blink-settings=scriptEnabled=false")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().count("\n") >= 1, timeout=30,
                 message="chromium did not open its DevTools port")
        port = int(port_file.read_text().splitlines()[0])

        def page_url() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                pages = [t for t in json.loads(resp.read()) if t.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        wait_for(lambda: page_url() is not None, timeout=20, message="chromium opened no page")
        return cls(proc, page_url() or "")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are skipped)."""
        self._id += 1
        wanted = self._id

        async def call() -> dict[str, Any]:
            await self.ws.write_message(json.dumps({"id": wanted, "method": method, "params": params}))
            while True:
                raw = await asyncio.wait_for(self.ws.read_message(), 30)
                if raw is None:
                    raise ConnectionError("chromium closed the DevTools connection")
                message = json.loads(raw)
                if message.get("id") == wanted:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message.get("result", {})

        return self.loop.run_until_complete(call())

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        wait_for(lambda: self.evaluate("document.readyState") == "complete" and
                 self.evaluate("location.href").startswith(url.split("#")[0].split("?")[0]),
                 timeout=20, message=f"{url} did not load")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def text(self, selector: str = "body") -> str:
        """What a person reads in the element (innerText), '' when absent."""
        return self.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText") or ""

    def wait_until(self, expression: str, timeout: float = 20, message: str = "") -> None:
        wait_for(lambda: bool(self.evaluate(expression)), timeout=timeout, message=message or expression)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        async def close_ws() -> None:  # inside its own loop: tornado writes the close frame there
            self.ws.close()

        try:
            self.loop.run_until_complete(close_ws())
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.loop.close()
