"""A misbehaving upstream on raw sockets: each answer is scripted byte by byte.

`tests.fake_upstream` answers like a real provider; this one answers like a broken one
(oversized heads, bombs, junk JSON, JSON to a stream request, held answers), and records what
a well-behaved server cannot: when each connection was closed by the gateway.

    with RawUpstream(lambda req, conn: conn.send_json({"choices": []})) as up:
        up.base_url                # http://127.0.0.1:<port>/v1
        up.requests                # RawRequest(conn_id, line, headers, body) in arrival order
        up.closed_at[conn_id]      # time.monotonic() when the peer closed that connection

`respond(request, conn)` writes the answer with `conn.send(...)` helpers and returns True to
keep the connection for another request (keep-alive), False to close it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass
class RawRequest:
    conn_id: int
    line: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() when it was read


class RawConn:
    """The server side of one connection."""

    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.id = conn_id
        self._buf = b""

    def read_request(self) -> RawRequest | None:
        while b"\r\n\r\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buf += data
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        size = int(headers.get("content-length", 0))
        while len(self._buf) < size:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buf += data
        body, self._buf = self._buf[:size], self._buf[size:]
        return RawRequest(self.id, lines[0], headers, body, time.monotonic())

    def send(self, data: bytes) -> bool:
        """Write `data`; False when the peer is gone."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def send_response(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None,
                      version: str = "HTTP/1.1", length: bool = True) -> bool:
        head = f"{version} {status} X\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if length:
            head += f"Content-Length: {len(body)}\r\n"
        return self.send(head.encode("latin-1") + b"\r\n" + body)

    def send_json(self, payload: Any, status: int = 200, **kwargs: Any) -> bool:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return self.send_response(body, status, headers, **kwargs)

    def wait_closed(self, timeout: float = 30.0) -> bool:
        """Block until the peer closes (True) or `timeout` passes (False); bytes read meanwhile are dropped."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except TimeoutError:
            return False
        except OSError:
            return True


Respond = Callable[[RawRequest, RawConn], bool]


class RawUpstream:
    """A loopback TCP server, one thread per connection, answering with `respond`."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[RawRequest] = []
        self.connections = 0
        self.closed_at: dict[int, float] = {}  # conn id -> when the peer closed it (or it ended)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        self._threads: list[threading.Thread] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> RawUpstream:
        thread = threading.Thread(target=self._accept, name="raw-upstream", daemon=True)
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True)
            thread.start()

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        conn = RawConn(sock, conn_id)
        try:
            while True:
                request = conn.read_request()
                if request is None:
                    break
                self.requests.append(request)
                if not self.respond(request, conn):
                    break
        except OSError:
            pass
        finally:
            self.closed_at.setdefault(conn_id, time.monotonic())
            sock.close()


def chat_answer(json_body: bytes, stream_body: bytes) -> Callable[[RawRequest, RawConn], bool]:
    """A `respond` that answers a chat request with these exact bytes: `json_body`, or `stream_body`
    (`text/event-stream`) when the request asks to stream; for tests that a relay changes no byte."""

    def respond(request: RawRequest, conn: RawConn) -> bool:
        if not orjson.loads(request.body).get("stream"):
            return conn.send_json(json_body)
        return conn.send_response(stream_body, headers={"Content-Type": "text/event-stream"})

    return respond


def relayed(client: Any, **request: Any) -> tuple[bytes, bytes]:
    """The bytes an OpenAI SDK `client` gets for a chat `request`: as JSON, then as a stream."""
    create = client.chat.completions.with_raw_response.create
    answer = create(**request).http_response.content
    return answer, b"".join(create(**request, stream=True).http_response.iter_bytes())
