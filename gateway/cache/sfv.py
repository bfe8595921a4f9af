"""RFC 8941 Dictionary parsing, strict and pure: what CDN-Cache-Control is (RFC 9213 §2.1).

A parser that fails anywhere fails the whole field (RFC 8941 §4.2: "fail parsing"), which
is what RFC 9213 asks of a targeted field that does not parse: it is ignored as a whole. So
this module returns None instead of a partial result, and never raises.

Bare items become Python values: Integer -> int, Decimal -> float, String -> str,
Token -> `Token`, Byte Sequence -> bytes, Boolean -> bool; an Inner List -> a tuple of them.
Parameters are checked for syntax and then dropped: no cache directive defines any.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

Bare = int | float | str | bytes | bool
Member = Bare | tuple[Bare, ...]


class Token(str):
    """An sf-token: a str that remembers it was not a quoted String."""

    __slots__ = ()


class _Fail(Exception):
    pass


# RFC 8941 §3.1.2 key, §3.3.1-2 integer/decimal, §3.3.4 token, §3.3.5 byte sequence.
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
_STRING_CHARS = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*')


def parse_dictionary(fields: Iterable[str]) -> dict[str, Member] | None:
    """The Dictionary of all field lines combined (RFC 8941 §4.2), or None if any fails."""
    text = ", ".join(fields).lstrip(" ")  # §4.2: combine lines, then discard leading SP
    try:
        parser = _Parser(text)
        members = parser.dictionary()
    except _Fail:
        return None
    return members


class _Parser:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def dictionary(self) -> dict[str, Member]:
        """§4.2.2; the trailing `discard SP` and emptiness check of §4.2 included."""
        members: dict[str, Member] = {}
        text = self.text
        while self.pos < len(text):
            key = self.key()
            if self.peek() == "=":
                self.pos += 1
                value: Member = self.item_or_inner_list()
            else:
                value = True
                self.parameters()
            members[key] = value  # §4.2.2: a repeated key overwrites the earlier value
            self.ows()
            if self.pos >= len(text):
                return members
            if text[self.pos] != ",":
                raise _Fail
            self.pos += 1
            self.ows()
            if self.pos >= len(text):
                raise _Fail  # a trailing comma
        return members

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def ows(self) -> None:
        text = self.text
        while self.pos < len(text) and text[self.pos] in " \t":
            self.pos += 1

    def match(self, pattern: re.Pattern[str]) -> re.Match[str]:
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise _Fail
        self.pos = found.end()
        return found

    def key(self) -> str:
        return self.match(_KEY).group(0)

    def item_or_inner_list(self) -> Member:
        if self.peek() == "(":
            return self.inner_list()
        item = self.bare_item()
        self.parameters()
        return item

    def inner_list(self) -> tuple[Bare, ...]:
        """§4.2.1.2"""
        self.pos += 1
        items: list[Bare] = []
        while self.pos < len(self.text):
            while self.peek() == " ":
                self.pos += 1
            if self.peek() == ")":
                self.pos += 1
                self.parameters()
                return tuple(items)
            items.append(self.bare_item())
            self.parameters()
            if self.peek() not in (" ", ")"):
                raise _Fail
        raise _Fail

    def parameters(self) -> None:
        """§4.2.3.2: checked, then dropped."""
        while self.peek() == ";":
            self.pos += 1
            while self.peek() == " ":
                self.pos += 1
            self.key()
            if self.peek() == "=":
                self.pos += 1
                self.bare_item()

    def bare_item(self) -> Bare:
        """§4.2.3.1"""
        first = self.peek()
        if first == "-" or (first.isascii() and first.isdigit()):
            return self.number()
        if first == '"':
            return self.string()
        if first == ":":
            return self.byte_sequence()
        if first == "?":
            return self.boolean()
        if first.isascii() and (first.isalpha() or first == "*"):
            return Token(self.match(_TOKEN).group(0))
        raise _Fail

    def number(self) -> int | float:
        """§4.2.4: at most 15 integer digits; a Decimal has 1-12 of them and 1-3 decimals."""
        text = self.match(_NUMBER).group(0)
        digits = text.lstrip("-")
        whole, dot, fraction = digits.partition(".")
        if not dot:
            if len(whole) > 15:
                raise _Fail
            return int(text)
        if len(whole) > 12 or len(fraction) > 3:
            raise _Fail
        return float(text)

    def string(self) -> str:
        """§4.2.5: printable ASCII; only \\" and \\\\ may be escaped."""
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            run = self.match(_STRING_CHARS).group(0)
            out.append(run)
            char = self.peek()
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char != "\\" or self.pos + 1 >= len(text) or text[self.pos + 1] not in '"\\':
                raise _Fail  # end of input, a control or non-ASCII character, a bad escape
            out.append(text[self.pos + 1])
            self.pos += 2

    def byte_sequence(self) -> bytes:
        """§4.2.7"""
        encoded = self.match(_BYTES).group(1)
        try:  # §4.2.7: missing "=" padding SHOULD NOT fail
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise _Fail from None

    def boolean(self) -> bool:
        """§4.2.8"""
        value = self.text[self.pos + 1:self.pos + 2]
        if value not in ("0", "1"):
            raise _Fail
        self.pos += 2
        return value == "1"
