"""Reverse-proxy sidecar gateway: routes, rate limits, an RFC 9111 cache and feature flags."""

__version__ = "0.1.0"
