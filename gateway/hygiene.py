"""Header fields that would mean something else downstream, settled on arrival (pure).

- A field name with "_": CGI, WSGI, PHP and Rack turn "-" into "_" when they make the
  environment (`HTTP_X_USER_ID`), so `X_User_Id` and `X-User-Id` are one name to them. A
  client sending `X_User_Id` would set the identity the gateway dropped as untrusted, or a
  flag it never evaluated. Such fields are dropped before anything reads or forwards them
  (nginx's `underscores_in_headers off`, its default).
- An identity field sent more than once: the gateway reads the first value (multidict's
  `get`), an upstream framework may read the last or join them. Forwarded as that one
  value, the gateway and the service agree on who is calling.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["drop_underscored", "first_values_only"]


def drop_underscored(headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    """`headers` without the fields whose names hold "_"; `headers` itself when none does
    (the usual case costs one join of the names)."""
    if "_" not in "".join(headers.keys()):
        return headers
    return CIMultiDictProxy(CIMultiDict(
        (name, value) for name, value in headers.items() if "_" not in name))


def first_values_only(headers: CIMultiDict[str], names: Iterable[str]) -> None:
    """Leave one value, the first, of each field in `names` that came more than once.

    `names` as `istr`, which multidict looks up without folding their case again."""
    getall = headers.getall
    for name in names:
        values = getall(name, ())
        if len(values) > 1:
            headers[name] = values[0]
