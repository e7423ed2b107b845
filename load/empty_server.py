"""An OTLP/HTTP endpoint that reads each body and answers 200 at once: the HTTP hop's floor.

The sidecar benchmark posts the very bodies it sends to the sidecar here, so the time of
one loopback round trip between two processes (aiohttp on uvloop at both ends, as the
emitter and the sidecar run) is measured beside the rest: no sidecar, however fast, can
answer a save in less than this hop plus the database's own commit.

    python -m load.empty_server 4399        # listens on 127.0.0.1:4399 until killed
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

_EMPTY_OTLP_ANSWER = b""  # an empty ExportTraceServiceResponse encodes to no bytes


async def _take(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_EMPTY_OTLP_ANSWER, content_type="application/x-protobuf")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 4399
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v1/traces", _take)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
