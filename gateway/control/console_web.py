"""The console over HTTP: `kt console`'s own Tornado app, and a gateway's `/keeptrusts/ui`.

Both serve the same page (gateway/control/console_page.py) from a `gather(filters)` that returns
the gateway views: `kt console` asks its gateways' admin endpoints server-side (the admin token
stays in this process); `/keeptrusts/ui` reads its own gateway and sits behind the admin token
(Bearer, or HTTP Basic with the token as password so a browser can prompt for it).
`?fragment=1` answers only the live part, which the page's script swaps in.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import tornado.web

from gateway.control.admin import _Admin
from gateway.control.console_data import Filters, GatewayView, local_view, remote_view
from gateway.control.console_page import fragment, page
from gateway.control.ops import Ops

Gather = Callable[[Filters], Awaitable[list[GatewayView]]]


def _csp(nonce: str) -> str:
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def _answer(handler: tornado.web.RequestHandler, views: list[GatewayView], filters: Filters, title: str) -> None:
    nonce = secrets.token_urlsafe(12)
    handler.set_header("Content-Type", "text/html; charset=utf-8")
    handler.set_header("Cache-Control", "no-store")
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("Referrer-Policy", "no-referrer")
    handler.set_header("Content-Security-Policy", _csp(nonce))
    if handler.get_query_argument("fragment", None):
        handler.finish(fragment(views, filters))
    else:
        handler.finish(page(views, filters, title, nonce))


class ConsolePage(tornado.web.RequestHandler):
    """`kt console`'s page: the fleet it was given."""

    def initialize(self, gather: Gather, title: str) -> None:
        self.gather = gather
        self.title = title

    async def get(self) -> None:
        filters = Filters.parse(lambda name: self.get_query_argument(name, None))
        _answer(self, await self.gather(filters), filters, self.title)


class GatewayUi(_Admin):
    """`GET /keeptrusts/ui`: the console page for this gateway alone."""

    browser = True

    async def get(self) -> None:
        filters = Filters.parse(lambda name: self.get_query_argument(name, None))
        view = await local_view(self.ops, filters.since, filters.verdict, filters.summary_args())
        _answer(self, [view], filters, "kt gateway")


def fleet_gather(urls: Sequence[str], token: str | None, timeout: float = 5.0) -> Gather:
    """Ask every gateway at once; the views in the order given."""

    async def gather(filters: Filters) -> list[GatewayView]:
        summary = filters.summary_args()
        return list(await asyncio.gather(*(remote_view(u, token, filters.since, timeout, filters.verdict, summary)
                                           for u in urls)))

    return gather


def console_app(urls: Sequence[str], token: str | None, timeout: float = 5.0) -> tornado.web.Application:
    """The `kt console` application: the page at `/`, every other path 404."""
    kwargs: dict[str, Any] = {"gather": fleet_gather(urls, token, timeout), "title": "kt console"}
    return tornado.web.Application([(r"/", ConsolePage, kwargs)], log_function=lambda handler: None)


def ui_routes(ops: Ops) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    return [(r"/keeptrusts/ui", GatewayUi, {"ops": ops})]
