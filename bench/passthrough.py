"""A minimal Tornado pass-through proxy: the baseline the gateway's overhead is measured against.

It does the least a proxy must: parse the JSON body once (orjson), swap the client's key for
the upstream key, re-serialise, forward over a pooled keep-alive client, and stream SSE chunks
back as they arrive (write + flush per chunk). No policies, events or metrics.

    python bench/passthrough.py --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8089 --client kt
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import tornado.httpclient
import tornado.httpserver
import tornado.web
from tornado.netutil import bind_sockets

UPSTREAM_KEY = "sk-upstream-bench"


class CurlClient:
    """Tornado's libcurl client with a large pool (the default 10 queues silently)."""

    def __init__(self) -> None:
        tornado.httpclient.AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=512)
        self.http = tornado.httpclient.AsyncHTTPClient()

    async def post(self, url: str, body: bytes, headers: dict[str, str],
                   on_chunk: Callable[[bytes], Any] | None) -> tuple[int, bytes]:
        resp = await self.http.fetch(url, method="POST", body=body, headers=headers, raise_error=False,
                                     streaming_callback=on_chunk, connect_timeout=5, request_timeout=60)
        return resp.code, b"" if on_chunk else resp.body or b""


class SimpleClient(CurlClient):
    """Tornado's pure-Python client (one connection per request, 10 concurrent at most by default)."""

    def __init__(self) -> None:
        tornado.httpclient.AsyncHTTPClient.configure(None, max_clients=512)
        self.http = tornado.httpclient.AsyncHTTPClient()


class KtClient:
    """The gateway's own upstream client (gateway/http/client.py), with the gateway's pool size."""

    def __init__(self) -> None:
        from gateway.http.client import Pool

        self.pool = Pool(connect_s=5, read_s=60, max_connections=1000)

    async def post(self, url: str, body: bytes, headers: dict[str, str],
                   on_chunk: Callable[[bytes], Any] | None) -> tuple[int, bytes]:
        resp = await self.pool.request(url, headers, body, stream=on_chunk is not None)
        if on_chunk is None:
            return resp.status, resp.body
        try:
            while chunk := await resp.read_chunk():
                await on_chunk(chunk)
        finally:
            resp.release()
        return resp.status, b""


class AiohttpClient:
    """aiohttp on Tornado's asyncio loop, unlimited keep-alive pool (`pip install aiohttp`)."""

    def __init__(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=60, connect=5))

    async def post(self, url: str, body: bytes, headers: dict[str, str],
                   on_chunk: Callable[[bytes], Any] | None) -> tuple[int, bytes]:
        async with self.session.post(url, data=body, headers=headers) as resp:
            if on_chunk is None:
                return resp.status, await resp.read()
            async for chunk in resp.content.iter_any():
                await on_chunk(chunk)
            return resp.status, b""


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")


CLIENTS = {"kt": KtClient, "curl": CurlClient, "aiohttp": AiohttpClient, "simple": SimpleClient}


class Proxy(tornado.web.RequestHandler):
    def initialize(self, client: Any, upstream: str) -> None:
        self.client = client
        self.upstream = upstream

    async def post(self, path: str) -> None:
        try:
            body = orjson.loads(self.request.body)
        except orjson.JSONDecodeError:
            self.set_status(400)
            self.finish({"error": {"type": "invalid_request", "code": "invalid_json", "message": "invalid JSON"}})
            return
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {UPSTREAM_KEY}"}
        url = self.upstream + "/v1/" + path
        if body.get("stream") is True:
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-cache")

            def on_chunk(chunk: bytes) -> Any:
                self.write(chunk)
                return self.flush()

            await self.client.post(url, orjson.dumps(body), headers, on_chunk)
            self.finish()
            return
        status, data = await self.client.post(url, orjson.dumps(body), headers, None)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--upstream", required=True, help="base URL without /v1")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="kt",
                        help="upstream client: kt (the gateway's own, default), curl (pycurl), aiohttp, simple")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (pip install uvloop)")
    parser.add_argument("--server", choices=["tornado", "kt"], default="tornado",
                        help="the HTTP/1.1 server: Tornado's HTTPServer (the issue's baseline, default) or the "
                             "gateway's own (gateway/http/http1.py), i.e. the gateway's stack without its policies")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")

    async def serve() -> None:
        client = CLIENTS[args.client]()
        routes = [(r"/healthz", Health), (r"/v1/(.*)", Proxy, {"client": client, "upstream": args.upstream})]
        app = tornado.web.Application(routes,
                                      log_function=lambda handler: None)
        sockets = bind_sockets(int(port), host)  # port 0: the system picks one, printed below
        if args.server == "kt":
            from gateway.http.http1 import HTTP1Server

            await HTTP1Server(app, max_body_size=64 * 2**20).add_sockets(sockets)
        else:
            tornado.httpserver.HTTPServer(app).add_sockets(sockets)
        print(f"pass-through ({args.server} server, {args.client} client) listening on "
              f"http://{host}:{sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    if args.uvloop:
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
