"""Flag definitions as JSON: what the admin API shows, accepts and stores.

A definition from `PUT`/`PATCH` is validated by the config file's own `parse_flag` and
`check_flag_graph` (one set of rules for both). PATCH is a JSON Merge Patch (RFC 7396) over
the flag's current definition: members replace, `null` removes a member (back to its
default), nested objects (`environments`) merge, lists replace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.model import Config, Flag
from gateway.config.parse import check_flag_graph, parse_flag
from gateway.config.reader import Reader

Definition = dict[str, Any]


def flag_to_json(flag: Flag) -> Definition:
    """The definition as JSON, members at their default left out; parse_flag reads it back."""
    out: Definition = {"type": flag.type.value, "status": flag.status.value,
                       "default": flag.default}
    if flag.description:
        out["description"] = flag.description
    if flag.owner:
        out["owner"] = flag.owner
    if flag.rollout is not None:
        out["rollout"] = int(flag.rollout) if float(flag.rollout).is_integer() else flag.rollout
    if flag.bucket_by:
        out["bucket_by"] = flag.bucket_by
    if flag.environments:
        out["environments"] = dict(flag.environments)
    if flag.tiers is not None:
        out["tiers"] = list(flag.tiers)
    if flag.expires is not None:
        out["expires"] = flag.expires.isoformat()
    if flag.variants:
        out["variants"] = [{"name": v.name, "value": v.value, "weight": v.weight}
                           for v in flag.variants]
    if flag.prerequisites:
        out["prerequisites"] = list(flag.prerequisites)
    if flag.targeting:
        out["targeting"] = [{"attribute": t.attribute, "operator": t.operator.value,
                             "values": list(t.values)} for t in flag.targeting]
    out["kill_switch"] = flag.kill_switch
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 §2 MergePatch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def parse_definition(config: Config, key: str, definition: object) -> tuple[Flag | None,
                                                                           list[str]]:
    """(flag, []) when valid for this config, else (None, every problem as 'path: message')."""
    reader = Reader("admin")
    flag = parse_flag(reader, key, definition, f"flags.{key}", 0, config.context.attributes)
    return (None, _messages(reader)) if reader.issues else (flag, [])


def check_flag_set(config: Config, flags: Mapping[str, Flag]) -> list[str]:
    """Prerequisites resolve and form no cycle; experiments keep their control variant."""
    reader = Reader("admin")
    check_flag_graph(reader, flags, {key: (0, f"flags.{key}") for key in flags})
    for name, exp in config.experiments.items():
        flag = flags.get(exp.flag)
        if flag is not None and exp.control not in {v.name for v in flag.variants}:
            reader.error(0, f"flags.{exp.flag}.variants",
                         f"experiment {name!r} needs a variant named {exp.control!r}")
    return _messages(reader)


def _messages(reader: Reader) -> list[str]:
    return [f"{issue.path}: {issue.message}" for issue in reader.issues]
