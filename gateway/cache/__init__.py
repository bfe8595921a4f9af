"""Response cache: RFC 9111 shared-cache semantics over an in-process LRU and Redis.

`policy` decides (pure), `stage` drives (I/O), `service` holds the long-lived stores.
"""

from gateway.cache.service import CacheService
from gateway.cache.stage import ResponseCache

__all__ = ["CacheService", "ResponseCache"]
