"""Rate limiting: four algorithms decided in one atomic Lua call per request.

* `rules`: rules + request context -> checks and keys (the key layout and its hash tags
  are explained there); `plan`: a route's rules compiled at load, with the checks of
  each combination of scope values cached (one dict lookup per request).
* `algorithms` / `local`: the in-process store; `lua/ratelimit.lua` / `redis_store`: the
  Redis store over the link's pipelined connection (`gateway/redispipe.py`).
  `tests/integration/test_ratelimit_stores.py` proves both decide identically.
* `cluster_store` / `slotrouter`: the same script on a Redis Cluster, one `Pipe` per master
  chosen by slot, a request's rules decided per slot and made all-or-nothing by
  reserve-and-return (`lua/ratelimit_return.lua`).
* `stage`: the pipeline stage (actions, failure modes, metrics, admin state/reset);
  `headers`: the response fields; `lanes`: the FIFO of `action: queue`;
  `admin`: GET/DELETE /admin/ratelimits/{rule}.
"""

from gateway.ratelimit import admin as _admin  # noqa: F401 - registers the admin endpoints
from gateway.ratelimit.cluster_store import ClusterStore
from gateway.ratelimit.local import LocalStore
from gateway.ratelimit.redis_store import RedisStore
from gateway.ratelimit.stage import RateLimiter

__all__ = ["ClusterStore", "LocalStore", "RateLimiter", "RedisStore"]
