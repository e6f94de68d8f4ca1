"""`kt console`: a web page over a fleet of gateways (gateway/control/console_web.py serves it).

The console asks the gateways' admin endpoints itself, with KEEPTRUSTS_ADMIN_TOKEN, so the
browser never holds the token. It has no login of its own: it listens on loopback by default.
"""

from __future__ import annotations

import asyncio
import os
import signal

import click

from kt.commands.gateway import parse_listen
from kt.doctor import mask_url  # imports sync on first use: `kt policy lint` loads no sync code

DEFAULT_LISTEN = "127.0.0.1:41003"


@click.command()
@click.option("--gateway", "gateways", multiple=True, required=True, metavar="URL",
              help="A gateway's base URL; repeat for each gateway of the fleet.")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT the console serves on (port 0: any free port, printed at start).")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for each gateway.")
def console(gateways: tuple[str, ...], listen: str, timeout: float) -> None:
    """Serve a live web page of the fleet: health, revisions, drift, decisions, charts, config.

    The admin token for the gateways comes from KEEPTRUSTS_ADMIN_TOKEN.
    """
    host, port = parse_listen(listen, None)
    for url in gateways:
        if not url.startswith(("http://", "https://")):
            raise click.BadParameter(f"{mask_url(url)!r}: expected an http:// or https:// URL", param_hint="--gateway")
    asyncio.run(_serve(list(gateways), host, port, timeout, os.environ.get("KEEPTRUSTS_ADMIN_TOKEN") or None))


async def _serve(urls: list[str], host: str, port: int, timeout: float, token: str | None) -> None:
    import tornado.httpserver
    import tornado.netutil

    from gateway.control.console_web import console_app

    sockets = tornado.netutil.bind_sockets(port, host)
    server = tornado.httpserver.HTTPServer(console_app(urls, token, timeout))
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    click.echo(f"kt console on http://{shown}:{bound[1]}/ for {len(urls)} gateway(s): "
               f"{', '.join(mask_url(u) for u in urls)}", err=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
