"""The gateway process: uvicorn (on uvloop) serving ``app.build_app`` on ``--http HOST:PORT``.

It says ready once its socket is bound, and writes the address it serves on (port 0 picks a free
one) to ``run/http.json`` for ``c2cq status`` and tests. Signals are uvicorn's: SIGTERM stops
accepting, lets the streams end (their HTTP clients see the end) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import sys
from pathlib import Path

from c2cq import lifecycle, log
from c2cq.client import AsyncClient
from c2cq.errors import ConfigError
from c2cq.rundir import RunDir, write_json
from c2cq.services.gateway.app import Config, build_app
from c2cq.services.gateway.models import Catalog
from c2cq.services.gateway.protocol import Limits

DEFAULT_HTTP = "127.0.0.1:8000"


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--http {text!r}: expected HOST:PORT (e.g. {DEFAULT_HTTP})")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def no_key_warning(host: str, port: int) -> str:
    return (f"c2cq gateway: WARNING: serving on {host}:{port} (not loopback) without an API key; "
            "anyone who can reach it can use it (give --api-key or C2CQ_API_KEY)")


def _server(config):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its own signal handlers: c2cq's flag (lifecycle.shutdown_flag) stops it."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Server(config)


def http_file(rd: RunDir, args: argparse.Namespace):
    return Path(args.url_file) if args.url_file else rd.run / "http.json"


async def amain(args: argparse.Namespace) -> None:
    import uvicorn

    logger = log.configure("gateway")
    rd = RunDir.from_env(args.home)
    host, port = parse_hostport(args.http)
    key = args.api_key or os.environ.get("C2CQ_API_KEY") or None
    if not key and not is_loopback(host):
        print(no_key_warning(host, port), file=sys.stderr, flush=True)
        logger.warning("no_api_key", host=host, port=port)
    config = Config(api_key=key, metrics_auth=args.metrics_auth, max_body_bytes=args.max_body_bytes,
                    max_concurrent=args.max_concurrent, limits=Limits(max_prompt_chars=args.max_prompt_chars))
    identity = f"c2cq-gateway-{args.identity}".encode() if args.identity else None
    client = AsyncClient(home=args.home, identity=identity, cancel_orphans=identity is not None,
                         timeout=args.request_timeout)
    await client.connect()
    catalog = Catalog(rd.catalog_addr)
    app = build_app(client, catalog, config)
    stop = lifecycle.shutdown_flag()
    server = _server(uvicorn.Config(app, host=host, port=port, loop="none", lifespan="off",
                                           log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():  # it could not bind: uvicorn logged why
            await serving
            raise ConfigError(f"the gateway could not serve on {host}:{port}")
        await asyncio.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    write_json(http_file(rd, args), {"url": url, "pid": os.getpid(), "auth": bool(key)})
    lifecycle.signal_ready()
    logger.info("ready", url=url, auth=bool(key))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([serving, stopper], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
    finally:
        stopper.cancel()
        http_file(rd, args).unlink(missing_ok=True)
        await client.cancel_all()  # a stream uvicorn cut at shutdown: nothing keeps running for it
        await client.close()
        catalog.close()
        logger.info("stopped")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="c2cq-gateway", description="The OpenAI-compatible HTTP API of c2cq.")
    p.add_argument("--home", default=None)
    p.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT",
                   help=f"where to listen (default {DEFAULT_HTTP}; port 0: any free one)")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on /v1/* (default $C2CQ_API_KEY)")
    p.add_argument("--metrics-auth", action="store_true", help="require the key on /health and /metrics too")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20)
    p.add_argument("--max-prompt-chars", type=int, default=1_000_000)
    p.add_argument("--max-concurrent", type=int, default=1024, help="requests in flight; more get 503 + Retry-After")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds a request may hear nothing")
    p.add_argument("--url-file", default=None, help="where to write the served URL (default run/http.json)")
    p.add_argument("--identity", default=None,
                   help="a stable client identity (the supervised gateway's): after a crash, the restarted "
                        "gateway cancels what its previous incarnation left running")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        parse_hostport(args.http)
    except ConfigError as e:
        sys.exit(f"c2cq gateway: error: {e}")
    lifecycle.run(lambda: amain(args))


if __name__ == "__main__":
    main()
