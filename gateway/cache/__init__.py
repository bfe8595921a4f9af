"""Response cache: RFC 9111 shared-cache semantics over an in-process LRU and Redis.

`policy` decides (pure), `stage` drives (I/O), `service` holds the long-lived stores,
`admin` serves POST /admin/cache/purge.
"""

from gateway.cache import admin as _admin  # noqa: F401 - registers the admin endpoint
from gateway.cache.service import CacheService
from gateway.cache.stage import ResponseCache

__all__ = ["CacheService", "ResponseCache"]
