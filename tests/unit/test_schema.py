"""`gateway schema`: a JSON Schema (2020-12) that accepts exactly the keys the parser does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import load_config
from gateway.config import reader as config_reader
from gateway.config.schema import schema
from tests.harness import REPO, SPEC_DIR, reference_config_with

# Keys the reference config leaves out, so that the walk visits every section of the parser.
EXTRA = """
upstreams:
  split_a: {url: "http://127.0.0.1:8000"}
rate_limits:
  extra_rule: {algorithm: token_bucket, scope: user, limit: 5, window: 1s,
               tiers: {pro: {limit: 9}}}
flags:
  extra_flag:
    type: multivariate
    variants: [{name: a, value: a, weight: 1}, {name: b, value: b, weight: 1}]
    targeting: [{attribute: tenant_id, operator: in, values: [x]}]
experiments:
  extra_exp:
    flag: extra_flag
    control: a
    status: paused
    sequential: true
    auto_stop: false
    metrics: [{name: m, primary: true, type: conversion, goal: increase, route: extra_route,
               status: 2xx}]
routes:
  - name: extra_route
    match: {path_prefix: /extra, headers: {X-A: "1"}}
    upstream: {read: split_a, write: split_a}
    cache: {ttl: 1s}
"""


def as_json(text: str) -> Any:
    """The YAML as an editor's schema check sees it: YAML 1.2, where 2027-06-30 is a string
    (PyYAML reads YAML 1.1 and makes it a date)."""
    return json.loads(json.dumps(yaml.safe_load(text), default=str))


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    document = schema()
    jsonschema.Draft202012Validator.check_schema(document)
    return jsonschema.Draft202012Validator(document)


def _merged(tmp_path: Path) -> Path:
    path = reference_config_with(tmp_path, "ecosystem", "hardening", "admission", "experiments")
    (tmp_path / "next").mkdir(exist_ok=True)
    shutil.copy(SPEC_DIR / "next" / "flags.flagd.json", tmp_path / "next")
    data = yaml.safe_load(path.read_text())
    extra = yaml.safe_load(EXTRA)
    for section in ("upstreams", "rate_limits", "flags", "experiments"):
        data[section] = {**data[section], **extra[section]}
    data["routes"] = [*extra["routes"], *data["routes"]]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _node(document: dict[str, Any], path: str) -> dict[str, Any]:
    """The schema object that describes the config section at `path` (a parser path)."""
    node: dict[str, Any] = document
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = _deref(document, node)
        if token.startswith("["):
            node = node["items"]
        elif token in node.get("properties", {}):
            node = node["properties"][token]
        else:  # a name chosen by the author: an upstream, a rule, a flag, an attribute
            node = node["additionalProperties"]
    return _deref(document, node)


def _deref(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in node:
            node = document["$defs"][node["$ref"].rsplit("/", 1)[1]]
        elif "oneOf" in node:  # the option that is a mapping with keys
            node = next(o for o in node["oneOf"] if "properties" in o)
        else:
            return node


def test_every_key_the_parser_accepts_is_in_the_schema(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []
    original = config_reader.Section.__init__

    def recording(self: config_reader.Section, reader: Any, data: Any, path: str, line: int,
                  allowed: Any) -> None:
        if allowed is not None:
            seen.append((path, tuple(allowed)))
        original(self, reader, data, path, line, allowed)

    monkeypatch.setattr(config_reader.Section, "__init__", recording)
    load_config(str(_merged(tmp_path)))
    document = schema()
    sections = {re.sub(r"\[\d+\]", "[]", path) for path, _ in seen}
    assert len(sections) >= 25, sections  # the walk reached every kind of section
    for path, allowed in seen:
        node = _node(document, path)
        assert node.get("additionalProperties") is False, path
        missing = [key for key in allowed if key not in node["properties"]]
        assert not missing, f"{path or '(top level)'}: {missing} not in the schema"
        extra = [key for key in node["properties"] if key not in allowed]
        assert not extra, f"{path or '(top level)'}: the schema has {extra}, the parser not"


def test_the_reference_and_demo_configs_validate(validator: Any, tmp_path: Path) -> None:
    for path in (SPEC_DIR / "gateway.yaml", _merged(tmp_path), REPO / "config" / "gateway.yaml"):
        errors = [e.message for e in validator.iter_errors(as_json(path.read_text()))]
        assert errors == [], path


@pytest.mark.parametrize(("change", "fragment"), [
    ({"listen": {"prot": 1}}, "'prot' was unexpected"),
    ({"rate_limit_headers": "ietf2"}, "is not one of"),
    ({"flag_bucketing": "flagd-v4"}, "is not one of"),
    ({"drain_timeout": "5 minutes"}, "is not valid"),
])
def test_what_the_parser_refuses_the_schema_refuses(validator: Any, change: dict[str, Any],
                                                    fragment: str) -> None:
    document = {**as_json((SPEC_DIR / "gateway.yaml").read_text()), **change}
    messages = [e.message for e in validator.iter_errors(document)]
    assert any(fragment in m for m in messages), messages


def test_gateway_schema_prints_it_and_the_committed_copy_is_current() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "schema"], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    assert json.loads(out) == schema()
    committed = REPO / "config" / "gateway.schema.json"
    assert json.loads(committed.read_text()) == schema(), \
        "regenerate it: python -m gateway schema > config/gateway.schema.json"
    first = (REPO / "config" / "gateway.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=./gateway.schema.json"
