"""What aiohttp's server side costs per request, against the least a server on aiohttp's own
C parser does. A script, not collected by pytest:

    .venv/bin/python tests/perf/bench_server_leg.py [--requests 300]

Two servers answer a fixed 24-byte body to the same keep-alive GETs (perfkit's driver, as
bench_cpu.py drives the gateway), each counted with callgrind (instructions per request of
the server process, user space, best of 2):

- `aiohttp`: aiohttp's low-level `web.Server` with a handler returning a `web.Response`,
  what the gateway's server leg is built on (gateway/wire/server.py);
- `gateway`: the same handler behind the gateway's server leg: GuardedHandler connections
  (gateway/wire/server.py) accepted by GuardedSite, GatewayRequests
  (gateway/wire/request.py), handlers run in their connection's task;
- `parser`: an asyncio protocol feeding aiohttp's C `HttpRequestParser` and answering each
  request from a task of its own with one write: no request or response objects, no
  keep-alive timer, no per-connection task.

The difference bounds what a leaner server leg could save the gateway per request: more
than the stages of the full route cost together (bench_cpu.py --parts).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import free_port
from tests.perf.perfkit import PYTHON, drive_keepalive, instructions_of_command

AIOHTTP_SERVER = """
import asyncio, sys, uvloop
from aiohttp import web

BODY = b"hello from the upstream\\n"

async def handler(request):
    return web.Response(body=BODY, content_type="text/plain")

async def main(port):
    runner = web.ServerRunner(web.Server(handler, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()

uvloop.install()
asyncio.run(main(int(sys.argv[1])))
"""

GATEWAY_SERVER = """
import asyncio, sys, uvloop
sys.path.insert(0, sys.argv[2])
from aiohttp import web
from gateway.edge import ConnectionRules
from gateway.wire.listener import GuardedSite
from gateway.wire.server import Guard, proxy_server

BODY = b"hello from the upstream\\n"

async def handler(request):
    return web.Response(body=BODY, content_type="text/plain")

async def main(port):
    runner = web.ServerRunner(proxy_server(handler))
    await runner.setup()
    await GuardedSite(runner, "127.0.0.1", port, guard=Guard(ConnectionRules()),
                      access_log=None).start()
    await asyncio.Event().wait()

uvloop.install()
asyncio.run(main(int(sys.argv[1])))
"""

PARSER_SERVER = """
import asyncio, sys, uvloop
from aiohttp.http_parser import HttpRequestParser

BODY = b"hello from the upstream\\n"
ANSWER = (b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 24\\r\\n\\r\\n"
          + BODY)

class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = HttpRequestParser(self, asyncio.get_running_loop(), 2**16,
                                        max_line_size=8190, max_field_size=8190)

    def data_received(self, data):
        messages, _, _ = self.parser.feed_data(data)
        for message, payload in messages:
            asyncio.get_running_loop().create_task(self.answer(message))

    async def answer(self, message):
        self.transport.write(ANSWER)

async def main(port):
    await asyncio.get_running_loop().create_server(Server, "127.0.0.1", port)
    await asyncio.Event().wait()

uvloop.install()
asyncio.run(main(int(sys.argv[1])))
"""


def _request(n: int) -> bytes:
    return (f"GET /bare/item/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"User-Agent: bench\r\nAccept: */*\r\n\r\n").encode()


def count(source: str, label: str, requests: int, tmp: Path) -> float:
    script = tmp / f"server_{label}.py"  # not aiohttp.py: it would import itself
    script.write_text(source)
    port = free_port()
    drive = partial(lambda port, _label, n, first: drive_keepalive(port, _request, n, first),
                    port)
    return instructions_of_command([PYTHON, str(script), str(port), str(REPO)], port, drive,
                                   (label,), requests)[label]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="per callgrind count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        aiohttp = count(AIOHTTP_SERVER, "aiohttp", args.requests, Path(tmp))
        gateway = count(GATEWAY_SERVER, "gateway", args.requests, Path(tmp))
        lean = count(PARSER_SERVER, "parser", args.requests, Path(tmp))
    print(f"instructions per request (callgrind, {args.requests} requests, best of 2):")
    print(f"  aiohttp web.Server + web.Response   {aiohttp:>9,.0f}")
    print(f"  the gateway's server leg, same answer {gateway:>9,.0f}   "
          f"({gateway - aiohttp:+,.0f} against aiohttp's)")
    print(f"  C parser + a task per request        {lean:>9,.0f}   "
          f"(aiohttp's server costs {aiohttp - lean:+,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
