"""Reading a YAML tree while collecting every problem as `FILE:LINE: dotted.path: message`.

A `Section` wraps one mapping: it reports unknown keys at once (naming the nearest valid key)
and hands out typed values through small converter functions that raise ValueError with the
message to show. Nothing stops at the first error: the whole file is read and every problem
is reported together, the way `gateway check` promises.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        # Line 0: a problem with no place in the file (it cannot be read, an env variable).
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}"


class ConfigError(Exception):
    """The configuration has problems; `issues` lists every one of them."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


def _line_of(data: object, key: object, fallback: int) -> int:
    line_of = getattr(data, "line_of", None)
    return int(line_of(key)) if line_of is not None else fallback


def nearest(word: str, choices: Collection[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


class Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[ConfigIssue] = []

    def error(self, line: int, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, line, path, message))

    def section(
        self, data: object, path: str, line: int, allowed: Collection[str] | None
    ) -> Section | None:
        """A mapping to read from, or None (with an error) when `data` is not a mapping."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error(line, path or "(top level)", f"expected a mapping, got {_kind(data)}")
            return None
        return Section(self, data, path, getattr(data, "line", line), allowed)

    def raise_if_any(self) -> None:
        if self.issues:
            raise ConfigError(sorted(self.issues, key=lambda i: (i.line, i.path)))


class Section:
    def __init__(
        self,
        reader: Reader,
        data: Mapping[str, Any],
        path: str,
        line: int,
        allowed: Collection[str] | None,
    ) -> None:
        self.r = reader
        self.data = data
        self.path = path
        self.line = line
        if allowed is not None:
            for key in data:
                if key not in allowed:
                    hint = nearest(str(key), allowed)
                    message = f"unknown key {key!r}" + (
                        f" (did you mean {hint!r}?)" if hint
                        else f" (valid keys: {', '.join(sorted(allowed))})"
                    )
                    self.r.error(self.line_of(key), self.child(key), message)

    def child(self, key: object) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def line_of(self, key: object) -> int:
        return _line_of(self.data, key, self.line)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def keys(self) -> Iterator[str]:
        return iter(self.data)

    def error(self, key: str | None, message: str) -> None:
        if key is None:
            self.r.error(self.line, self.path or "(top level)", message)
        else:
            self.r.error(self.line_of(key), self.child(key), message)

    def get(self, key: str, convert: Callable[[Any], T], default: Any = _REQUIRED) -> Any:
        """The converted value of `key`; its default when absent; None after an error."""
        if key not in self.data or (self.data[key] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                self.error(key, "is required")
                return None
            return default
        try:
            return convert(self.data[key])
        except ValueError as exc:
            self.error(key, str(exc))
            return None

    def section(self, key: str, allowed: Collection[str] | None) -> Section | None:
        return self.r.section(self.data.get(key), self.child(key), self.line_of(key), allowed)

    def items(self, key: str) -> Iterator[tuple[str, Any, str, int]]:
        """(name, value, path, line) for each entry of the mapping under `key`."""
        sub = self.data.get(key)
        if sub is None:
            return
        if not isinstance(sub, Mapping):
            self.error(key, f"expected a mapping, got {_kind(sub)}")
            return
        for name, value in sub.items():
            yield str(name), value, f"{self.child(key)}.{name}", _line_of(sub, name, self.line)

    def elements(self, key: str) -> Iterator[tuple[int, Any, str, int]]:
        """(index, value, path, line) for each item of the list under `key`."""
        sub = self.data.get(key)
        if sub is None:
            return
        if not isinstance(sub, list):
            self.error(key, f"expected a list, got {_kind(sub)}")
            return
        for index, value in enumerate(sub):
            yield index, value, f"{self.child(key)}[{index}]", _line_of(sub, index, self.line)


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return f"{type(value).__name__} {value!r}"


# --- converters: each returns the value or raises ValueError with the message to show ---

def string(value: object) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"expected a non-empty string, got {_kind(value)}")


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {_kind(value)}")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")
        return value

    return convert


def number(minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: bool = False) -> Callable[[object], float]:
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {_kind(value)}")
        if minimum is not None:
            if exclusive_minimum and value <= minimum:
                raise ValueError(f"must be greater than {minimum:g}, got {value}")
            if value < minimum:
                raise ValueError(f"must be at least {minimum:g}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum:g}, got {value}")
        return float(value)

    return convert


def choice(options: Collection[str]) -> Callable[[object], str]:
    options = [str(o) for o in options]

    def convert(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        hint = nearest(str(value), options) if isinstance(value, str) else None
        suffix = f" (did you mean {hint!r}?)" if hint else ""
        raise ValueError(
            f"must be one of {', '.join(options)}; got {value!r}{suffix}"
        )

    return convert


def string_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of strings, got {_kind(value)}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError(f"expected a list of strings, found {_kind(item)}")
    return tuple(value)


def any_value(value: object) -> object:
    return value
