"""Warnings for a valid config that probably does not do what its author meant.

`gateway check` prints them and still exits 0: the config is valid, and the gateway runs it.
"""

from __future__ import annotations

from gateway.config.model import Config


def config_warnings(config: Config) -> list[str]:
    warnings: list[str] = []
    identity = [*(f"context.{name}" for name in config.context.fields),
                *(f"context.attributes.{name}" for name in config.context.attributes)]
    if identity and not config.context.trusted_proxies:
        # gateway.context: identity headers are believed only from trusted proxies.
        warnings.append(
            f"{', '.join(identity)} read request headers, but context.trusted_proxies is "
            "empty: those headers are believed only from a trusted proxy, so they are "
            "always dropped, every request has no identity, and every flag that targets or "
            "buckets by one serves its default. List the proxy in front of the gateway "
            "(127.0.0.1/32 for a sidecar's own service) in context.trusted_proxies.")
    return warnings
