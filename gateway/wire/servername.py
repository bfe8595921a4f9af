"""The `Server` field of the answers aiohttp writes for the gateway: a name, no versions.

aiohttp puts `Server: Python/3.x aiohttp/3.y.z` on every response it prepares that lacks
one (`StreamResponse._prepare_headers`, from the module global `SERVER_SOFTWARE` of
aiohttp.web_response, which is not public API). On the gateway's own answers (404, 429,
problem+json errors, the admin API, the parser's 400s) that tells a scanner which CVEs to
try; nginx's `server_tokens off` and Envoy's `server_name` exist for the same reason.
Responses relayed from an upstream keep the upstream's own `Server` field.
"""

from __future__ import annotations

import aiohttp.web_response

from gateway.wire import need

PRODUCT = "sidecar-gateway"  # a product token without a version (RFC 9110 §10.2.4)


@need("aiohttp", "aiohttp.web_response.SERVER_SOFTWARE (the default Server field)")
def _probe() -> bool:
    return isinstance(getattr(aiohttp.web_response, "SERVER_SOFTWARE", None), str)


def install(product: str = PRODUCT) -> None:
    """Make `product` the Server field of every response aiohttp prepares without one."""
    aiohttp.web_response.SERVER_SOFTWARE = product  # type: ignore[attr-defined]
