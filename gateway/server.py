"""One gateway process: the proxy listener, the admin listener, reload and graceful drain.

`Services` are the long-lived parts (upstream pools, Redis, stores) that survive a reload;
`build_runtime` turns a Config plus services into a Runtime, which a reload swaps whole.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
from dataclasses import dataclass, field

from aiohttp import web

from gateway import metrics
from gateway.accesslog import access_log
from gateway.admin import build_admin_app
from gateway.admission import Gates
from gateway.admission.share import Ledger
from gateway.cache import CacheService, ResponseCache
from gateway.cache.assets import AssetRules
from gateway.compression import Compressor
from gateway.config import Config, ConfigError, load_config
from gateway.config.model import FailureMode
from gateway.edge import BAD_REQUEST_LOG, ConnectionRules
from gateway.experiments.engine import Experiments
from gateway.experiments.recorder import Recorder
from gateway.experiments.store import LocalExperimentStore, RedisExperimentStore
from gateway.flags import FlagEngine, FlagOverrides
from gateway.metrictally import TALLY
from gateway.pipeline import Pipeline, Runtime
from gateway.proxy import UpstreamPool
from gateway.ratelimit import ClusterStore, LocalStore, RateLimiter, RedisStore
from gateway.redisconn import RedisLink
from gateway.wire import servername
from gateway.wire.listener import (
    ADMIN_MAX_CONNECTIONS,
    GuardedSite,
    connection_cap,
    files_reserved,
    raise_open_file_limit,
)
from gateway.wire.server import Guard, proxy_server

log = logging.getLogger("gateway")

WATCH_INTERVAL = 1.0  # seconds between looks at the config file


@dataclass
class Services:
    """Parts that outlive a configuration: pools, connections, stored state."""

    pool: UpstreamPool
    redis: RedisLink | None = None
    flag_overrides: FlagOverrides = field(default_factory=FlagOverrides)
    # Rate-limit state and the decision batcher live here so counters survive a reload.
    limits_local: LocalStore = field(default_factory=LocalStore)
    limits_remote: RedisStore | ClusterStore | None = None
    cache: CacheService | None = None
    # Experiment records: queued per process, added up in Redis (or here without it).
    recorder: Recorder = field(default_factory=lambda: Recorder(LocalExperimentStore()))
    # Admission state outlives a reload: permits out and waiters stay counted.
    gates: Gates = field(default_factory=Gates)

    @classmethod
    async def create(cls, config: Config, workers: int = 1, ledger: Ledger | None = None
                     ) -> Services:
        redis = RedisLink(config.redis) if config.redis is not None else None
        flag_overrides = FlagOverrides(redis)
        await flag_overrides.start()  # stored runtime flag changes, before the first request
        cache = CacheService(config.cache, redis)
        await cache.start()
        recorder = Recorder(RedisExperimentStore(redis) if redis is not None
                            else LocalExperimentStore())
        recorder.start()
        return cls(pool=UpstreamPool(config.upstreams), redis=redis,
                   flag_overrides=flag_overrides,
                   limits_remote=remote_limits(redis) if redis is not None else None,
                   cache=cache, recorder=recorder, gates=Gates(workers, ledger))

    async def close(self) -> None:
        await self.recorder.close()  # what was recorded until now reaches the store
        await self.flag_overrides.close()
        await self.pool.close()
        if self.limits_remote is not None:
            await self.limits_remote.close()
        if self.cache is not None:
            await self.cache.close()
        if self.redis is not None:
            await self.redis.close()


def remote_limits(redis: RedisLink) -> RedisStore | ClusterStore:
    """On a cluster, rules are decided per slot on each master (see ClusterStore)."""
    return ClusterStore(redis) if redis.settings.cluster else RedisStore(redis)


def build_runtime(config: Config, services: Services) -> Runtime:
    """The stages this config asks for, wired to the long-lived services."""
    flags = FlagEngine(config, services.flag_overrides)
    stages: dict[str, object] = {"flags": flags}
    services.limits_local.bound(config.rate_limits_local_max_keys)
    if config.experiments:
        stages["experiments"] = Experiments(config, services.recorder, services.recorder.store,
                                            flags)
    if any(route.rate_limits for route in config.routes):
        stages["limiter"] = RateLimiter(config, services.limits_local, services.limits_remote)
    if services.cache is not None and any(r.cache is not None for r in config.routes):
        stages["cache"] = ResponseCache(services.cache, config)
    stages["gates"] = services.gates.adopt(config.upstreams)
    if config.compression is not None:
        stages["compressor"] = Compressor(config.compression, config, services.cache)
    if config.cache.asset_policies or config.cache.immutable_paths is not None:
        stages["assets"] = AssetRules(config.cache, {r.name: r.cache for r in config.routes})
    return Runtime.build(config, services.pool, **stages)


class GatewayProcess:
    """Serves one config in this process. `control_path` set: a worker under a supervisor."""

    def __init__(self, config_path: str, config: Config, control_path: str | None = None,
                 reuse_port: bool = False, workers: int = 1, ledger: Ledger | None = None
                 ) -> None:
        self.config_path = config_path
        self.workers = workers  # processes of this instance (admission limits are split)
        self.ledger = ledger  # where the workers lend each other admission permits
        self.control_path = control_path
        self.reuse_port = reuse_port
        self.services: Services | None = None
        self.pipeline = Pipeline(Runtime.build(config, UpstreamPool({})),
                                 access_log(config.logging.access_log))
        self._initial = config
        rules = ConnectionRules.from_listen(config.listen)
        self.guard = Guard(rules, lane=self.pipeline.lane)
        self.admin_guard = Guard(rules)
        self._runners: list[web.BaseRunner] = []
        self.stopping = asyncio.Event()
        self.draining = False
        self.ready = False
        self._reload_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def _swap(self, runtime: Runtime) -> None:
        """Serve `runtime` from now on; its background work starts, the old one's stops."""
        old = self.pipeline.runtime.experiments
        self.pipeline.runtime = runtime
        self.pipeline.lane.forget()
        if runtime.experiments is not None:
            runtime.experiments.start()
        if old is not None:
            await old.close()

    async def start(self) -> None:
        config = self._initial
        servername.install()  # before the first response: no version in Server
        self.services = await Services.create(config, self.workers, self.ledger)
        await self._swap(build_runtime(config, self.services))
        BAD_REQUEST_LOG.configure(config.logging.bad_request_lines_per_second)
        server = proxy_server(self.pipeline.handle)
        proxy_runner = web.ServerRunner(server, shutdown_timeout=config.drain_timeout,
                                        handle_signals=False)
        await proxy_runner.setup()
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        proxy_site = GuardedSite(
            proxy_runner, config.listen.host, config.listen.port, guard=self.guard,
            cap=connection_cap(config.listen.max_connections, files, files_reserved(config)),
            reuse_port=self.reuse_port, backlog=1024,
            max_line_size=max(8190, config.listen.max_header_size),
            # 8192, not 8190: a line limit unlike the request line's tells 431 from 414
            max_field_size=max(8192, 4 * config.listen.max_header_size),
            # The body goes upstream as it came, with its Content-Encoding and -Length.
            auto_decompress=False,
            access_log=None,
        )
        await proxy_site.start()
        if proxy_site.limit < config.listen.max_connections:
            log.warning("listen.max_connections is %d but the open-file limit (%d) leaves room "
                        "for %d client connections beside the upstream and Redis pools",
                        config.listen.max_connections, files, proxy_site.limit)
        self._runners.append(proxy_runner)

        admin_runner = web.AppRunner(build_admin_app(self), handle_signals=False,
                                     access_log=None, shutdown_timeout=1.0)
        await admin_runner.setup()
        if self.control_path:
            await web.UnixSite(admin_runner, self.control_path).start()
        else:
            await GuardedSite(admin_runner, config.admin.host, config.admin.port,
                              guard=self.admin_guard, cap=ADMIN_MAX_CONNECTIONS,
                              access_log=None).start()
        self._runners.append(admin_runner)
        self._watcher = asyncio.get_running_loop().create_task(self._watch_file())
        self.ready = True
        log.info("gateway serving on %s:%s (admin %s), %s", config.listen.host,
                 config.listen.port, self.control_path or
                 f"{config.admin.host}:{config.admin.port}", config.summary())

    async def drain_and_stop(self) -> None:
        """SIGTERM: readiness goes 503, listeners close, in-flight requests get drain_timeout."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: no new connections, in-flight requests have %.1fs",
                 self.pipeline.runtime.config.drain_timeout)
        if self._watcher is not None:
            self._watcher.cancel()
        proxy_runner, admin_runner = self._runners
        if self.services is not None:  # queued requests are answered, not dropped
            self.services.gates.drain(self.pipeline.runtime.config.drain_timeout)
        await proxy_runner.cleanup()  # stops accepting, waits for handlers up to drain_timeout
        await admin_runner.cleanup()
        if self.pipeline.access_log is not None:
            self.pipeline.access_log.close()  # the lines of the last requests, written now
        TALLY.apply_all()  # a worker's figures reach the files the supervisor keeps reading
        if self.pipeline.runtime.experiments is not None:
            await self.pipeline.runtime.experiments.close()
        if self.services is not None:
            await self.services.close()
        self.stopping.set()

    async def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.ready or self.services is None:
            return False, "starting"
        redis = self.pipeline.runtime.config.redis
        if redis is not None and redis.failure_mode is FailureMode.CLOSED and \
                self.services.redis is not None and not await self.services.redis.ping():
            return False, "Redis does not answer and failure_mode is closed"
        return True, "serving"

    # ------------------------------------------------------------------ file watch
    def _file_signature(self) -> tuple[tuple[int, int, int] | None, ...] | None:
        """The config file's (mtime, size, inode), then each flag source's (None: missing)."""
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        signatures: list[tuple[int, int, int] | None] = [(st.st_mtime_ns, st.st_size,
                                                           st.st_ino)]
        for source in self.pipeline.runtime.config.flag_sources:
            try:
                st = os.stat(source.path)
                signatures.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                signatures.append(None)
        return tuple(signatures)

    async def _watch_file(self) -> None:
        """Reload when the config file or a flag source changes on disk (an edit, or a
        ConfigMap swap)."""
        seen = self._file_signature()
        while not self.draining:
            await asyncio.sleep(WATCH_INTERVAL)
            now = self._file_signature()
            if now is not None and now != seen:
                log.info("%s (or a flag source) changed on disk; reloading",
                         self.config_path)
                await self.reload()
                seen = self._file_signature()  # the sources of the config now in force

    # ------------------------------------------------------------------ reload
    async def reload(self) -> tuple[bool, str | list[str]]:
        """Re-read the config file; on errors keep the running config and say why."""
        async with self._reload_lock:
            try:
                config = load_config(self.config_path, os.environ)
            except ConfigError as exc:
                errors = [str(i) for i in exc.issues]
                metrics.CONFIG_RELOADS.labels("rejected").inc()
                log.error("reload rejected, keeping the running config:\n%s", "\n".join(errors))
                return False, errors
            assert self.services is not None
            retired = self.services.pool.adopt(config.upstreams)
            await self._swap(build_runtime(config, self.services))
            self.guard.rules = self.admin_guard.rules = ConnectionRules.from_listen(config.listen)
            BAD_REQUEST_LOG.configure(config.logging.bad_request_lines_per_second)
            metrics.CONFIG_RELOADS.labels("applied").inc()
            log.info("config reloaded: %s", config.summary())
            if retired:
                # Requests that started before the swap may still use the old pools.
                async def close_later() -> None:
                    await asyncio.sleep(config.drain_timeout + 1)
                    await asyncio.gather(*(s.close() for s in retired))

                asyncio.get_running_loop().create_task(close_later())
            return True, config.summary()


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


async def serve(config_path: str, config: Config, control_path: str | None = None,
                reuse_port: bool = False, workers: int = 1, ledger: Ledger | None = None
                ) -> int:
    process = GatewayProcess(config_path, config, control_path, reuse_port, workers, ledger)
    loop = asyncio.get_running_loop()
    try:
        await process.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(process.drain_and_stop()))
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(process.reload()))
    await process.stopping.wait()
    return 0


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap on the request path (measured, tests/perf).

    With the default gen-0 threshold (700 net container allocations) the objects of the
    requests in flight alone keep crossing it, so collections ran every few requests and
    re-scanned live request state; a full collection also walked every object made at
    startup (modules, config). Freezing those startup objects and raising the gen-0
    threshold cut the collector's share of a request from ~21 us to ~0. Garbage cycles are
    still collected, just in larger batches; reference counting frees everything else at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000)


def run_process(config_path: str, config: Config, control_path: str | None = None,
                reuse_port: bool = False, workers: int = 1, ledger: Ledger | None = None
                ) -> int:
    install_uvloop()
    configure_logging(config.logging.level)
    raise_open_file_limit()
    tune_gc()
    return asyncio.run(serve(config_path, config, control_path, reuse_port, workers,
                             ledger))

