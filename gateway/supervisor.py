"""`workers: N`: N processes share the listen port (SO_REUSEPORT) under one supervisor.

The supervisor restarts a worker that dies, forwards SIGTERM (drain) and SIGHUP (reload),
and owns the admin listener. Each worker serves the admin app on a private unix socket; the
supervisor answers /healthz and /metrics itself (metrics are summed over the workers through
prometheus-client's multiprocess files), asks every worker for /readyz, sends reads to one
worker and changes to all of them, so one admin call acts on the whole gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

import aiohttp
import orjson
from aiohttp import web

from gateway.config import Config
from gateway.edge import BAD_REQUEST_LOG, ConnectionRules
from gateway.wire import servername
from gateway.wire.listener import ADMIN_MAX_CONNECTIONS, GuardedSite
from gateway.wire.server import Guard

log = logging.getLogger("gateway.supervisor")

# Mutating calls that must happen once, not once per worker.
ONE_WORKER = ("/admin/events",)
# Reads sent as POST (OFREP evaluations carry their context in the body): one worker answers.
READS_OVER_POST = ("/ofrep/",)
_RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)


class Worker:
    def __init__(self, index: int, control: str) -> None:
        self.index = index
        self.control = control
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.crashes: list[float] = []


class Supervisor:
    def __init__(self, config_path: str, config: Config, workers: int) -> None:
        self.config_path = config_path
        self.config = config
        self.count = workers
        self.tmp = tempfile.mkdtemp(prefix="gateway-")
        self.metrics_dir = os.path.join(self.tmp, "metrics")
        os.makedirs(self.metrics_dir)
        self.workers = [Worker(i, os.path.join(self.tmp, f"worker-{i}.sock"))
                        for i in range(workers)]
        self.stopping = False
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ workers
    async def _spawn(self, worker: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.control)  # a socket left by the worker this one replaces
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=self.metrics_dir)
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "worker", "--config", self.config_path,
            "--control", worker.control, "--of", str(self.count), "--slot", str(worker.index),
            "--ledger", self.tmp, env=env,
        )
        if worker.session is None:
            worker.session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=worker.control),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    async def _watch(self, worker: Worker) -> None:
        from prometheus_client import multiprocess

        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                worker.proc.pid, self.metrics_dir)
            if self.stopping:
                return
            now = time.monotonic()
            worker.crashes = [t for t in worker.crashes if now - t < 60] + [now]
            delay = _RESTART_BACKOFF[min(len(worker.crashes), len(_RESTART_BACKOFF)) - 1]
            log.error("worker %d (pid %d) exited with %s; restarting in %.1fs",
                      worker.index, worker.proc.pid, code, delay)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            await self._spawn(worker)

    def signal_all(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(sig)

    # ------------------------------------------------------------------ admin front
    async def _ask(self, worker: Worker, request: web.Request, body: bytes,
                   extra: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        assert worker.session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "accept",
                                    "if-none-match")}
        headers.update(extra or {})
        async with worker.session.request(request.method, f"http://worker{request.path_qs}",
                                          data=body or None, headers=headers) as resp:
            payload = await resp.read()
            keep = {k: v for k, v in resp.headers.items()
                    if k.lower() in ("content-type", "www-authenticate", "allow", "etag")}
            return resp.status, payload, keep

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.method in ("GET", "HEAD") or \
                request.path.startswith((*ONE_WORKER, *READS_OVER_POST)):
            targets = self.workers[:1]
        else:
            targets = self.workers
        try:
            answers = await asyncio.gather(*(self._ask(w, request, body) for w in targets))
        except (aiohttp.ClientError, OSError) as exc:
            from gateway.problem import problem

            return problem(503, f"a worker did not answer: {exc}")
        # Report the first refusal if any worker refused, else the first answer.
        status, payload, headers = next((a for a in answers if a[0] >= 400), answers[0])
        return web.Response(status=status, body=payload, headers=headers)

    async def _admission(self, request: web.Request) -> web.Response:
        """Every worker holds its share of each limit: the instance's view is their sum."""
        from gateway.admission import merge_reports
        from gateway.problem import problem

        try:
            answers = await asyncio.gather(*(self._ask(w, request, b"") for w in self.workers))
        except (aiohttp.ClientError, OSError) as exc:
            return problem(503, f"a worker did not answer: {exc}")
        refused = next((a for a in answers if a[0] != 200), None)
        if refused is not None:
            return web.Response(status=refused[0], body=refused[1], headers=refused[2])
        merged = merge_reports([orjson.loads(payload) for _, payload, _ in answers])
        return web.Response(body=orjson.dumps(merged, option=orjson.OPT_INDENT_2),
                            content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        """The sum of the workers' files, once every worker has applied what it holds (a
        worker applies its request metrics at most once a second otherwise,
        gateway/metrictally.py): asking a worker for its /metrics makes it do that, and
        only that with APPLY_ONLY."""
        from gateway.admin import APPLY_ONLY, metrics_text

        # A worker that does not answer (restarting) holds nothing a scrape could miss
        # for long: the rest is still worth serving.
        await asyncio.gather(*(self._ask(w, request, b"", {APPLY_ONLY: "1"})
                               for w in self.workers), return_exceptions=True)
        return await metrics_text(request)

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.stopping:
            return web.json_response({"status": "not ready", "detail": "draining"}, status=503)
        for worker in self.workers:
            try:
                status, _, _ = await self._ask(worker, request, b"")
            except (aiohttp.ClientError, OSError):
                status = 503
            if status != 200:
                return web.json_response(
                    {"status": "not ready", "detail": f"worker {worker.index} is not ready"},
                    status=503)
        return web.json_response({"status": "ready", "detail": f"{self.count} workers"})

    def _admin_app(self) -> web.Application:
        from gateway.admin import healthz

        app = web.Application(client_max_size=1024**2)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/admin/admission", self._admission)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    # ------------------------------------------------------------------ main
    async def run(self) -> int:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def stop() -> None:
            if not self.stopping:
                self.stopping = True
                log.info("draining %d workers", self.count)
                self.signal_all(signal.SIGTERM)
                done.set()

        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_signal_handler(signal.SIGINT, stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.signal_all(signal.SIGHUP))
        for worker in self.workers:
            await self._spawn(worker)
        watchers = [loop.create_task(self._watch(w)) for w in self.workers]
        servername.install()  # the admin answers it writes itself: no version in Server
        self._runner = web.AppRunner(self._admin_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        BAD_REQUEST_LOG.configure(self.config.logging.bad_request_lines_per_second)
        try:
            # The same deadlines as the proxy listener: a slow client cannot pin the admin API.
            await GuardedSite(self._runner, self.config.admin.host, self.config.admin.port,
                              guard=Guard(ConnectionRules.from_listen(self.config.listen)),
                              cap=ADMIN_MAX_CONNECTIONS, access_log=None).start()
        except OSError as exc:
            log.error("cannot open the admin listener: %s", exc)
            stop()
        await done.wait()
        grace = self.config.drain_timeout + 5
        try:
            await asyncio.wait_for(asyncio.gather(*watchers), timeout=grace)
        except TimeoutError:
            log.error("workers still running %.0fs after SIGTERM; killing them", grace)
            self.signal_all(signal.SIGKILL)
        await self._runner.cleanup()
        for worker in self.workers:
            if worker.session is not None:
                await worker.session.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return 0


def run_supervisor(config_path: str, config: Config, workers: int) -> int:
    from gateway.server import configure_logging, install_uvloop

    install_uvloop()
    configure_logging(config.logging.level)
    return asyncio.run(Supervisor(config_path, config, workers).run())
