"""Who may call the admin listener: the one place that decides which paths need the token.

* `/healthz`, `/readyz` and `/metrics` are open: probes and scrapers carry no credentials.
* Every path under `PROTECTED_PREFIXES` needs `Authorization: Bearer <token>` when
  `admin.token_env` names a set variable, reads included: the running config, flag
  definitions and other clients' quotas are not public.
* With no token configured those paths answer only on a loopback admin listener; anywhere
  else they are refused (403), since anyone who can reach the port could change the gateway.

Loopback is decided from the configured `admin.host`, not from the peer address: under a
supervisor every call reaches a worker over a private unix socket, whose peer says nothing
about who called the supervisor's TCP listener.

Pure: no aiohttp here, so `gateway check` uses the same rule to warn about it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from typing import NamedTuple

from gateway.config.model import Admin

# Paths that need the token: the admin API, and OFREP, which follows the rule of the admin
# reads (flag definitions and their values are not public). Nothing else decides this.
PROTECTED_PREFIXES = ("/admin/", "/ofrep/")
REALM = "gateway-admin"


def needs_token(path: str) -> bool:
    """`path` is the decoded path aiohttp routes on (`request.path`): every spelling the
    router could map under a prefix (e.g. `/%61dmin/config`) decodes to it."""
    return path.startswith(PROTECTED_PREFIXES) or path.rstrip("/") in (
        p.rstrip("/") for p in PROTECTED_PREFIXES)


def loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # "" and 0.0.0.0 listen everywhere; other names may resolve anywhere
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def configured_token(admin: Admin, environ: Mapping[str, str]) -> str | None:
    """The token callers must present, or None when none is configured (an unset or empty
    variable counts as none)."""
    if not admin.token_env:
        return None
    return environ.get(admin.token_env) or None


def unset_token_hint(admin: Admin) -> str:
    if admin.token_env:
        return f"set the variable {admin.token_env} (named by admin.token_env) to a secret token"
    return "set admin.token_env to the name of a variable that holds a secret token"


class Refusal(NamedTuple):
    status: int
    detail: str
    challenge: str | None  # the WWW-Authenticate value of a 401


def check(path: str, authorization: str | None, admin: Admin, token: str | None
          ) -> Refusal | None:
    """None when the call may go ahead, else why not (RFC 6750 §3 for the bearer token)."""
    if not needs_token(path):
        return None
    if token is None:
        if loopback(admin.host):
            return None
        return Refusal(403, f"{path} is refused: the admin listener is not on loopback "
                       f"({admin.host!r}) and no admin token is configured; "
                       + unset_token_hint(admin), None)
    scheme, _, credentials = (authorization or "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        # RFC 6750 §3.1: a request without credentials gets the bare challenge, no error code.
        return Refusal(401, "this call needs 'Authorization: Bearer <token>'",
                       f'Bearer realm="{REALM}"')
    if not hmac.compare_digest(credentials.encode("utf-8", "surrogateescape"),
                               token.encode("utf-8", "surrogateescape")):
        # RFC 6750 §3.1: invalid_token is answered with 401 so the client may ask for a new one.
        return Refusal(401, "the bearer token is not valid",
                       f'Bearer realm="{REALM}", error="invalid_token"')
    return None
