"""`flag_sources:`: flagd flag-definition files read at load, checked like the config.

Each file is read and validated whenever the config is (`gateway check`, start, reload), so
a bad flag file is refused with the running flags kept, exactly like a bad config. A key
defined twice (in `flags:` and a file, or in two files) is an error: no source silently
overrides another.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from gateway.config import model as m
from gateway.config.reader import Reader, Section, string
from gateway.flagd.definition import FlagdFlag, parse_flagd

_MAX_FILE = 16 * 1024**2  # a flag file is configuration: larger is a mistake


def _read(path: str) -> bytes | str:
    """The file's bytes, or the reason it cannot be read (a str)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_FILE + 1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if len(data) > _MAX_FILE:
        return f"{path} is larger than {_MAX_FILE // 1024**2} MiB"
    return data


def parse_flag_sources(r: Reader, top: Section, config_file: str,
                       flags: Mapping[str, m.Flag]) -> tuple[tuple[m.FlagSource, ...],
                                                              dict[str, Any]]:
    """The sources and every flag they define; problems go to `r` with their line."""
    folder = os.path.dirname(os.path.abspath(config_file))
    sources: list[m.FlagSource] = []
    loaded: dict[str, FlagdFlag] = {}
    for _, value, path, line in top.elements("flag_sources"):
        section = r.section(value, path, line, ("file",))
        if section is None:
            continue
        file = section.get("file", string)
        if not file:
            continue
        resolved = os.path.normpath(os.path.join(folder, file))
        sources.append(m.FlagSource(file, resolved))
        data = _read(resolved)
        if isinstance(data, str):
            section.error("file", data)
            continue
        flag_set, problems = parse_flagd(data, resolved)
        for json_path, message in problems:
            section.error("file", f"{file}: {json_path}: {message}")
        for key, flag in flag_set.flags.items():
            if key in flags:
                section.error("file", f"{file} defines flag {key!r}, which `flags:` defines "
                                      "too; each flag has one source")
            elif key in loaded:
                section.error("file", f"{file} defines flag {key!r}, which "
                                      f"{loaded[key].source} defines too")
            else:  # flagd: a flag's own metadata wins over its file's
                loaded[key] = dataclasses.replace(
                    flag, metadata={**flag_set.metadata, **flag.metadata})
    return tuple(sources), dict(loaded)
