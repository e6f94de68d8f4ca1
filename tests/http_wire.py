"""A raw HTTP/1.1 client over a real socket, for tests of the wire: send bytes, read responses as they come."""

from __future__ import annotations

import json
import socket
from typing import Any


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, chunks: list[bytes]) -> None:
        self.status, self.headers, self.body, self.chunks = status, headers, body, chunks

    def json(self) -> Any:
        return json.loads(self.body)


class Wire:
    """A raw client connection with a reader of HTTP/1.1 responses."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    def read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        out, self.buf = self.buf.split(sep, 1)
        return out + sep

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> tuple[int, dict[str, str]]:
        lines = self.read_until(b"\r\n\r\n").decode("latin1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return status, headers

    def chunk(self) -> bytes:
        size = int(self.read_until(b"\r\n")[:-2], 16)
        data = self.read_exact(size + 2)
        assert data.endswith(b"\r\n")
        return data[:-2]

    def response(self, head: bool = False) -> Response:
        status, headers = self.head()
        chunks: list[bytes] = []
        if head or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding") == "chunked":
            while chunk := self.chunk():
                chunks.append(chunk)
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self.read_exact(int(headers["content-length"]))
        else:
            body = self.read_to_eof()
        return Response(status, headers, body, chunks)

    def read_to_eof(self) -> bytes:
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionResetError):
            pass
        out, self.buf = self.buf, b""
        return out

    def closed(self) -> bool:
        """True when the server closed the connection and sent nothing more."""
        return not self.buf and self.read_to_eof() == b""

    def close(self) -> None:
        self.sock.close()


def request(method: str, path: str, body: bytes | None = None, version: str = "HTTP/1.1", **headers: str) -> bytes:
    lines = [f"{method} {path} {version}", "Host: test"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
