"""`flag_sources`, `flag_bucketing` and `ofrep` in the config, and `gateway check` on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.model import Bucketing
from tests.harness import SPEC_DIR, reference_config_with
from tests.unit.test_config import MINIMAL

FLAG = ('{"flags": {"%s": {"state": "ENABLED", "variants": {"on": true, "off": false}, '
        '"defaultVariant": "off"}}}')


def issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    return [str(i) for i in info.value.issues]


def test_reference_config_with_the_ecosystem_keys_passes(tmp_path: Path) -> None:
    path = reference_config_with(tmp_path, "ecosystem")
    (tmp_path / "next").mkdir()
    shutil.copy(SPEC_DIR / "next" / "flags.flagd.json", tmp_path / "next")
    config = load_config(str(path))
    assert [s.file for s in config.flag_sources] == ["next/flags.flagd.json"]
    assert sorted(config.flagd_flags) == ["new_search", "price_display"]
    assert config.flag_bucketing is Bucketing.FLAGD_V2 and config.ofrep is True


def test_flag_source_paths_are_relative_to_the_config_file(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "f.json").write_text(FLAG % "k")
    path = tmp_path / "conf" / "g.yaml"
    path.write_text(MINIMAL + "flag_sources:\n  - file: f.json\nflag_bucketing: flagd-v3\n")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(str(path))
    assert list(config.flagd_flags) == ["k"]
    assert config.flag_bucketing is Bucketing.FLAGD_V3


def test_a_missing_flag_file_is_reported_with_the_config_line(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(MINIMAL + "flag_sources:\n  - file: nowhere.json\n")
    [issue] = issues(path)
    assert issue.startswith(f"{path}:8: flag_sources[0].file: cannot read ")
    assert "nowhere.json" in issue


def test_a_bad_flag_file_is_reported_with_its_json_path(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text('{"flags": {"k": {"state": "ENABLED", "variants": '
                                     '{"a": 1}, "defaultVariant": "b"}}}')
    path = tmp_path / "g.yaml"
    path.write_text(MINIMAL + "flag_sources:\n  - file: f.json\n")
    [issue] = issues(path)
    assert "flag_sources[0].file: f.json: flags.k.defaultVariant: 'b' is not one" in issue


def test_a_key_defined_by_two_sources_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(FLAG % "dup")
    (tmp_path / "b.json").write_text(FLAG % "dup")
    (tmp_path / "c.json").write_text(FLAG % "inline")
    path = tmp_path / "g.yaml"
    path.write_text(MINIMAL + "flags:\n  inline: {default: false}\nflag_sources:\n"
                    "  - file: a.json\n  - file: b.json\n  - file: c.json\n")
    found = issues(path)
    assert any("b.json defines flag 'dup', which" in i and "a.json defines too" in i
               for i in found), found
    assert any("c.json defines flag 'inline', which `flags:` defines too" in i
               for i in found), found


def test_a_route_may_list_flagd_flags_and_an_unknown_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text(FLAG % "k")
    path = tmp_path / "g.yaml"
    path.write_text(MINIMAL.replace("upstream: api", "upstream: api\n    flags: [k]")
                    + "flag_sources:\n  - file: f.json\n")
    assert load_config(str(path)).routes[0].flags == ("k",)
    path.write_text(MINIMAL.replace("upstream: api", "upstream: api\n    flags: [kk]")
                    + "flag_sources:\n  - file: f.json\n")
    [issue] = issues(path)
    assert "routes[0].flags: unknown flag 'kk' (did you mean 'k'?)" in issue


def test_flag_bucketing_and_ofrep_values_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(MINIMAL + "flag_bucketing: flagd-v4\nofrep: 'yes'\n")
    found = issues(path)
    assert any("flag_bucketing: must be one of flagd-v2, flagd-v3" in i for i in found)
    assert any("ofrep: expected true or false" in i for i in found)
