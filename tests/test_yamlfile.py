"""The safe YAML loader: hostile and broken files are refused with file and line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from milter.errors import ConfigError, FileError, RulesError
from milter.yamlfile import (
    MAX_DEPTH,
    Checker,
    LineMap,
    load_yaml,
    parse_yaml,
    unknown_key_message,
)


def write(tmp_path: Path, text: str | bytes, name: str = "f.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def load_error(path: Path, **kwargs: int) -> RulesError:
    with pytest.raises(RulesError) as info:
        load_yaml(path, error=RulesError, **kwargs)
    return info.value


def test_loads_data_with_the_line_of_every_key_and_item(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# comment\nrules:\n  - name: spam\n    if:\n      probability: {min: 0.9}\n    action: spam_folder\n"
        "  - name: default\n    action: deliver\n",
    )
    data, lines = load_yaml(path, error=RulesError)
    assert data == {
        "rules": [
            {"name": "spam", "if": {"probability": {"min": 0.9}}, "action": "spam_folder"},
            {"name": "default", "action": "deliver"},
        ]
    }
    assert lines.line(("rules",)) == 2
    assert lines.line(("rules", 0)) == 3
    assert lines.line(("rules", 0, "if", "probability", "min")) == 5
    assert lines.line(("rules", 0, "action")) == 6
    assert lines.line(("rules", 1)) == 7
    assert lines.line(("rules", 1, "action")) == 8
    # A path that does not exist falls back to its nearest known ancestor.
    assert lines.line(("rules", 1, "if", "size")) == 7
    assert lines.line(()) == 2


def test_empty_file_is_none(tmp_path: Path) -> None:
    data, lines = load_yaml(write(tmp_path, "# only a comment\n"), error=RulesError)
    assert data is None
    assert lines.line(()) is None


def test_error_class_is_the_callers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_yaml(write(tmp_path, "a: [\n"), error=type("CfgError", (FileError, ConfigError), {}))


def test_yaml_bomb_is_refused_at_the_first_alias(tmp_path: Path) -> None:
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    e = load_error(write(tmp_path, "\n".join(bomb) + "\n"))
    assert e.line == 2
    assert "aliases (*a) are not allowed" in str(e)
    assert str(e).startswith(f"{tmp_path / 'f.yaml'}:2: ")


def test_merge_key_alias_is_refused(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "base: &b {x: 1}\nother:\n  <<: *b\n"))
    assert e.line == 3
    assert "aliases (*b) are not allowed" in e.message


def test_100_mb_file_is_refused_from_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:  # sparse: costs no disk and no time
        f.truncate(100 * 1024 * 1024)
    e = load_error(path)
    assert e.line is None
    assert e.message == "file is too large: 104,857,600 bytes; the limit is 1,000,000"


def test_limit_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path, "".join(f"{k}: 1\n" for k in "abcdefghij"))
    assert load_error(path, max_bytes=20).message == "file is too large: 50 bytes; the limit is 20"
    assert len(load_yaml(path, max_bytes=50, error=RulesError)[0]) == 10  # type: ignore[arg-type]


def test_unsized_file_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.fail("/dev/zero is missing")
    e = load_error(Path("/dev/zero"), max_bytes=1000)
    assert e.message == "file is too large: more than 1,000 bytes"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.yaml").message == "no such file"
    assert load_error(tmp_path).message == "is a directory, expected a YAML file"


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, b"a: 1\nb: caf\xe9\n"))
    assert e.line == 2
    assert e.message == "not valid UTF-8 (byte 0xe9); save the file as UTF-8"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    data, _ = load_yaml(write(tmp_path, b"\xef\xbb\xbfa: caf\xc3\xa9\n"), error=RulesError)
    assert data == {"a": "café"}


def test_tab_indentation_gets_a_hint(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "rules:\n\t- name: x\n"))
    assert e.line == 2
    assert "tabs are not allowed for indentation in YAML; use spaces" in e.message


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "a: 1\nb: [1, 2\nc: 3\n"))
    assert e.line == 3
    assert e.message.startswith("invalid YAML: ")
    assert "while parsing a flow sequence at line 2" in e.message


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "a: 1\nb: 2\na: 3\n"))
    assert e.line == 3
    assert e.message == 'invalid YAML: duplicate key "a" (first at line 1)'


def test_python_tags_are_refused(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "a: !!python/object/apply:os.system ['true']\n"))
    assert e.line == 1
    assert e.message == (
        "invalid YAML: tag !!python/object/apply:os.system is not allowed;"
        " only plain data (strings, numbers, lists, mappings)"
    )


def test_set_tag_is_refused(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "a: !!set {x}\n"))
    assert e.message.startswith("invalid YAML: tag !!set is not allowed;")
    assert load_error(write(tmp_path, "a: !custom x\n")).message.startswith(
        "invalid YAML: tag !custom is not"
    )


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "[" * 10_000 + "]" * 10_000))
    assert e.message == f"invalid YAML: nested more than {MAX_DEPTH} levels deep"


def test_control_characters_are_refused(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "a: 1\nb: x\x00y\n"))
    assert e.line == 2
    assert e.message == "invalid YAML: character #x0000 is not allowed"


def test_second_document_is_refused(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "a: 1\n---\nb: 2\n"))
    assert e.line == 2
    assert e.message == "invalid YAML: only one document is allowed; found a second one (a '---' line)"


def test_complex_keys_are_refused(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, "? [1, 2]\n: x\n"))
    assert (
        e.message == "invalid YAML: a key must be a plain value (a string or number), not a list or mapping"
    )


def test_parse_yaml_from_text_and_bytes() -> None:
    assert parse_yaml("a: [1, 2]\n", None, error=RulesError)[0] == {"a": [1, 2]}
    assert parse_yaml(b"a: x\n", "mem.yaml", error=RulesError)[0] == {"a": "x"}
    with pytest.raises(RulesError) as info:
        parse_yaml("a: [\n", None, error=RulesError)
    assert str(info.value).startswith("<input>:2: invalid YAML")


def test_unknown_key_message_suggests_the_closest() -> None:
    assert unknown_key_message("probabilty", ["action", "if", "probability"]) == (
        'unknown key "probabilty"; did you mean "probability"? expected one of: action, if, probability'
    )
    assert unknown_key_message("zzz", ["b", "a"]) == 'unknown key "zzz"; expected one of: a, b'


def test_checker_messages(tmp_path: Path) -> None:
    data, lines = parse_yaml("x:\n  n: yes\n  p: 1.5\n  s: 3\n  k: 1\n", "c.yaml", error=RulesError)
    check = Checker("c.yaml", lines, RulesError)
    x = check.mapping(data, (), "file")["x"]
    m = check.mapping(x, ("x",), "x")

    def err(fn: object) -> str:
        with pytest.raises(RulesError) as info:
            fn()  # type: ignore[operator]
        return str(info.value)

    assert err(lambda: check.number(m["n"], ("x", "n"), "x: n")) == (
        'c.yaml:2: x: n: expected a number, got a boolean "true"'
    )
    assert err(lambda: check.number(m["p"], ("x", "p"), "x: p", low=0, high=1)) == (
        "c.yaml:3: x: p: 1.5 is out of range; expected a number between 0 and 1"
    )
    assert err(lambda: check.string(m["s"], ("x", "s"), "x: s")) == (
        'c.yaml:4: x: s: expected a string, got an integer "3"'
    )
    assert err(lambda: check.keys(m, ("x",), "x", ["n", "p", "s"])) == (
        'c.yaml:5: x: unknown key "k"; expected one of: n, p, s'
    )
    assert err(lambda: check.keys(m, ("x",), "x", ["n", "p", "s", "k", "q"], required=["q"])) == (
        'c.yaml:1: x: missing key "q"'
    )
    assert err(lambda: check.choice("flg", ("x", "k"), "action", ["deliver", "flag"])) == (
        'c.yaml:5: action: unknown value "flg"; did you mean "flag"? expected one of: deliver, flag'
    )
    assert err(lambda: check.sequence(m, ("x",), "x")) == "c.yaml:1: x: expected a list, got a mapping"


def test_linemap_empty() -> None:
    assert LineMap().line(("a",)) is None
    assert len(LineMap({("a",): 3})) == 1
