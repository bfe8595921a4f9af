"""Access log lines through the real gateway: one per request, whole, none lost at drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
from aiohttp import web

from tests.harness import REPO, Upstream, base_config, client_session, wait_for_port, write_config


def start_with_piped_stdout(config_path: Path, workers: int
                            ) -> tuple[subprocess.Popen[bytes], list[bytes]]:
    """The gateway with stdout on a pipe, as under a container runtime; a thread reads it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config_path),
         "--workers", str(workers)],
        cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    chunks: list[bytes] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            chunks.append(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, chunks


async def test_two_workers_on_one_pipe_write_one_whole_line_per_request(
        upstream: Upstream, tmp_path: Path) -> None:
    config = base_config(upstream.url)
    config["logging"] = {"level": "warning", "access_log": True}
    port = config["listen"]["port"]
    proc, lines = start_with_piped_stdout(write_config(tmp_path, config), workers=2)
    try:
        wait_for_port(port, timeout=20, proc=proc)
        # Long paths make a loop turn's lines exceed PIPE_BUF, so the writer must cut them.
        paths = [f"/item/{i}/" + "x" * (i % 400) for i in range(1500)]
        async with client_session() as s:
            async def get(path: str) -> None:
                async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                    assert r.status == 200
                    await r.read()

            for start in range(0, len(paths), 100):
                await asyncio.gather(*(get(p) for p in paths[start:start + 100]))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    await asyncio.sleep(0.2)  # the reader thread takes the last bytes
    records = [orjson.loads(line) for line in lines if line.startswith(b"{")]
    assert len(records) == len([line for line in lines if line.strip()])  # nothing else, no torn line
    assert sorted(r["path"] for r in records) == sorted(paths)


async def test_a_request_in_flight_at_sigterm_is_served_and_logged(
        upstream: Upstream, tmp_path: Path) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.Response(text="late but whole")

    upstream.on("/slow", slow)
    config = base_config(upstream.url)
    config["logging"] = {"level": "warning", "access_log": True}
    config["drain_timeout"] = "5s"
    port = config["listen"]["port"]
    proc, lines = start_with_piped_stdout(write_config(tmp_path, config), workers=1)
    try:
        wait_for_port(port, timeout=20, proc=proc)
        async with client_session() as s:
            async def fetch() -> str:
                async with s.get(f"http://127.0.0.1:{port}/slow",
                                 headers={"X-Request-Id": "in-flight"}) as r:
                    return await r.text()

            pending = asyncio.ensure_future(fetch())
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            assert await pending == "late but whole"
    finally:
        assert proc.wait(timeout=30) == 0
    await asyncio.sleep(0.2)
    records = [orjson.loads(line) for line in lines if line.startswith(b"{")]
    assert [(r["request_id"], r["status"]) for r in records] == [("in-flight", 200)]
