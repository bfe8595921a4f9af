"""The dependency boundary cannot erode: outside gateway/wire, no module of the gateway
imports or touches a private name of aiohttp, redis-py or prometheus-client (gateway.wire
probes those at start; anything outside it would break unnoticed on an upgrade)."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
PACKAGES = ("aiohttp", "redis", "prometheus_client")
# Modules that are the packages' internals even where their names carry no underscore.
INTERNAL_MODULES = frozenset({
    "aiohttp.http", "aiohttp.http_writer", "aiohttp.http_parser", "aiohttp.http_exceptions",
    "aiohttp.web_protocol", "aiohttp.client_proto", "aiohttp.base_protocol",
    "aiohttp.client_reqrep", "aiohttp.streams", "aiohttp.helpers",
    "redis.connection", "redis.asyncio.connection",
    "prometheus_client.values", "prometheus_client.mmap_dict",
})
# Public API that happens to start with an underscore.
NAMEDTUPLE_API = frozenset({"_fields", "_field_defaults", "_make", "_replace", "_asdict"})


def outside_wire() -> Iterator[Path]:
    for path in sorted(GATEWAY.rglob("*.py")):
        if "wire" not in path.relative_to(GATEWAY).parts[:1]:
            yield path


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_violations(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        modules: list[tuple[str, list[str]]] = []
        if isinstance(node, ast.Import):
            modules = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [(node.module, [alias.name for alias in node.names])]
        for module, names in modules:
            if module.split(".")[0] not in PACKAGES:
                continue
            if any(_private(part) for part in module.split(".")) or module in INTERNAL_MODULES:
                yield node.lineno, f"imports the internal module {module}"
            for name in names:
                if _private(name):
                    yield node.lineno, f"imports the private name {module}.{name}"


def _other_modules(tree: ast.AST) -> set[str]:
    """Names bound to modules of other packages (`os`, `sys`): their underscore API
    (`os._exit`, `sys._getframe`) is not what this boundary is about."""
    return {alias.asname or alias.name.partition(".")[0]
            for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names if alias.name.partition(".")[0] not in PACKAGES}


def attribute_violations(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """`something._name` where something is not the object's own self or class (nor
    super(), nor a module of another package): in this code base only a dependency's
    private attribute has been reached that way."""
    own = {"self", "cls"} | _other_modules(tree)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)) or \
                node.attr in NAMEDTUPLE_API:
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in own:
            continue
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and \
                base.func.id == "super":
            continue
        yield node.lineno, f"reaches into .{node.attr} of another object"


def subclass_violations(path: Path, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """A class deriving from a dependency's class that uses underscore names (its own or,
    worse, its base's internals) belongs in gateway/wire, with a probe."""
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    if not classes:
        return
    module = importlib.import_module(
        ".".join(path.relative_to(GATEWAY.parent).with_suffix("").parts))
    for node in classes:
        cls = getattr(module, node.name, None)
        if not isinstance(cls, type) or not any(
                base.__module__.split(".")[0] in PACKAGES for base in cls.__mro__[1:]):
            continue
        for inner in ast.walk(node):
            name = (inner.attr if isinstance(inner, ast.Attribute) else
                    inner.id if isinstance(inner, ast.Name) else "")
            if _private(name):
                yield inner.lineno, f"class {node.name} (a dependency's subclass) uses {name}"


def test_no_private_name_of_aiohttp_redis_or_prometheus_outside_gateway_wire() -> None:
    found: list[str] = []
    for path in outside_wire():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(GATEWAY.parent)
        for line, what in (*import_violations(tree), *attribute_violations(tree),
                           *subclass_violations(path, tree)):
            found.append(f"{where}:{line}: {what}")
    assert found == [], "move these into gateway/wire with a probe:\n" + "\n".join(found)


def test_the_scan_sees_each_kind_of_private_use() -> None:
    sample = ast.parse(
        "from aiohttp.http_writer import StreamWriter\n"
        "from redis._parsers.base import BaseParser\n"
        "from aiohttp.web import _private_helper\n"
        "import prometheus_client.values\n"
        "x = child._value\n"
        "import os\n"
        "ok = self._mine, cls._also, Point._fields, os._exit, super()._up\n")
    lines = sorted(line for line, _ in (*import_violations(sample),
                                        *attribute_violations(sample)))
    assert lines == [1, 2, 3, 4, 5]
