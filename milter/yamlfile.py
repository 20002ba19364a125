"""Safe loading of the YAML files operators write (rules, config), with the line of every value.

Operators edit these files by hand and the daemon reloads them live, so loading must be safe
against hostile or broken input and every error must point at a line:

- only plain data (yaml.SafeLoader; no Python tags, no custom tags);
- no aliases (`*name`): alias expansion is how a "billion laughs" YAML bomb turns a few bytes
  into gigabytes, and hand-written config does not need them; with aliases refused, the loaded
  data is a tree no larger than the file;
- files larger than `max_bytes` are refused from their size alone, before they are read;
- nesting deeper than MAX_DEPTH is refused (deep nesting would otherwise exhaust the stack);
- duplicate keys in one mapping are refused (PyYAML would silently keep the last one);
- text must be UTF-8 (a BOM is allowed); tabs used for indentation get a hint.

`load_yaml` returns the data with a `LineMap`: the 1-based line of every mapping entry and
sequence item, keyed by its path from the root (`("rules", 0, "if", "probability")`). The
`Checker` turns that into validators' errors: `rules/default.yaml:12: rule "x": unknown key
"probabilty"; did you mean "probability"? expected one of: action, if, name`.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from milter.errors import FileError

MAX_BYTES = 1_000_000
MAX_DEPTH = 64

Key = str | int
KeyPath = tuple[Key, ...]

_STD = "tag:yaml.org,2002:"
_MAP_TAG = _STD + "map"
_SEQ_TAG = _STD + "seq"
_SCALAR_TAGS = frozenset(_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp"))


class LineMap:
    """1-based line numbers of the values in a loaded YAML document, by path from the root."""

    __slots__ = ("_lines",)

    def __init__(self, lines: Mapping[KeyPath, int] | None = None) -> None:
        self._lines: dict[KeyPath, int] = dict(lines or {})

    def line(self, path: Sequence[Key] = ()) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one (None: nothing known)."""
        p = tuple(path)
        while True:
            if p in self._lines:
                return self._lines[p]
            if not p:
                return None
            p = p[:-1]

    def __len__(self) -> int:
        return len(self._lines)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting while composing the node tree."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ComposerError(
                None,
                None,
                f"aliases (*{event.anchor}) are not allowed; write the value out in full",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(
    path: Path | str,
    *,
    max_bytes: int = MAX_BYTES,
    error: type[FileError],
) -> tuple[object, LineMap]:
    """Read and parse the YAML file at `path`: (data, lines). An empty file gives (None, ...).

    Raises `error(path, message, line)` (a FileError subclass the caller chooses: RulesError,
    a config error, ...) for a file that cannot be read, is larger than `max_bytes` (checked
    before reading), is not UTF-8, is not valid YAML or uses what this loader refuses.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = _stat_size(f.fileno())
            if size > max_bytes:
                raise error(path, f"file is too large: {size:,} bytes; the limit is {max_bytes:,}")
            # Not every file has a meaningful size (pipes, /dev/zero): never read more than allowed.
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(path, "no such file") from None
    except IsADirectoryError:
        raise error(path, "is a directory, expected a YAML file") from None
    except OSError as e:
        raise error(path, f"cannot read: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise error(path, f"file is too large: more than {max_bytes:,} bytes")
    return parse_yaml(raw, path, max_bytes=max_bytes, error=error)


def parse_yaml(
    source: bytes | str,
    path: Path | str | None,
    *,
    max_bytes: int = MAX_BYTES,
    error: type[FileError],
) -> tuple[object, LineMap]:
    """Parse YAML already in memory, as `load_yaml` does; `path` only names it in errors."""
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise error(path, f"file is too large: {len(source):,} bytes; the limit is {max_bytes:,}")
        try:
            text = source.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = source.count(b"\n", 0, e.start) + 1
            raise error(
                path, f"not valid UTF-8 (byte 0x{source[e.start]:02x}); save the file as UTF-8", line
            ) from None
    else:
        if len(source) > max_bytes:
            raise error(path, f"file is too large: {len(source):,} characters; the limit is {max_bytes:,}")
        text = source.removeprefix("\ufeff")

    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        data = _build(loader, node, (), lines) if node is not None else None
    except yaml.MarkedYAMLError as e:
        raise error(path, _describe(e), e.problem_mark.line + 1 if e.problem_mark else None) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise error(path, f"invalid YAML: character #x{e.character:04x} is not allowed", line) from None
    except yaml.YAMLError as e:
        raise error(path, f"invalid YAML: {e}") from None
    except RecursionError:
        raise error(path, "invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is not None:
        lines.setdefault((), node.start_mark.line + 1)
    return data, LineMap(lines)


def _stat_size(fd: int) -> int:
    return os.fstat(fd).st_size


def _describe(e: yaml.MarkedYAMLError) -> str:
    problem = e.problem or "invalid YAML"
    if e.context and e.context.startswith("expected a single document"):
        return "invalid YAML: only one document is allowed; found a second one (a '---' line)"
    if "'\\t'" in problem or "\\t" in problem:
        problem += " (tabs are not allowed for indentation in YAML; use spaces)"
    if e.context and e.context_mark is not None and e.problem_mark is not None:
        if e.context_mark.line != e.problem_mark.line:
            return f"invalid YAML: {problem} ({e.context} at line {e.context_mark.line + 1})"
        return f"invalid YAML: {e.context}: {problem}"
    return f"invalid YAML: {problem}"


def _build(loader: _Loader, node: Node, path: KeyPath, lines: dict[KeyPath, int]) -> object:
    """Plain Python data from a node tree (a tree: aliases were refused), recording lines."""
    mark = node.start_mark
    if isinstance(node, ScalarNode):
        if node.tag not in _SCALAR_TAGS:
            raise _tag_error(node)
        return loader.construct_object(node, deep=True)
    if isinstance(node, SequenceNode):
        if node.tag != _SEQ_TAG:
            raise _tag_error(node)
        items: list[object] = []
        for i, child in enumerate(node.value):
            lines[(*path, i)] = child.start_mark.line + 1
            items.append(_build(loader, child, (*path, i), lines))
        return items
    if isinstance(node, MappingNode):
        if node.tag != _MAP_TAG:
            raise _tag_error(node)
        loader.flatten_mapping(node)  # `<<: {...}` merge keys written inline
        result: dict[Key, object] = {}
        for key_node, value_node in node.value:
            kmark = key_node.start_mark
            if not isinstance(key_node, ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a key must be a plain value (a string or number), not a list or mapping",
                    kmark,
                )
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, bool) or not isinstance(key, str | int):
                key = key_node.value  # keep odd keys (1.5, null, dates) as written, for the messages
            if key in result:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f'duplicate key "{key}" (first at line {lines[(*path, key)]})',
                    kmark,
                )
            lines[(*path, key)] = kmark.line + 1
            result[key] = _build(loader, value_node, (*path, key), lines)
        return result
    raise yaml.constructor.ConstructorError(None, None, "unexpected YAML node", mark)


def _tag_error(node: Node) -> yaml.MarkedYAMLError:
    tag = "!!" + node.tag.removeprefix(_STD) if node.tag.startswith(_STD) else node.tag
    return yaml.constructor.ConstructorError(
        None,
        None,
        f"tag {tag} is not allowed; only plain data (strings, numbers, lists, mappings)",
        node.start_mark,
    )


# --- messages ---------------------------------------------------------------------------------


def type_name(value: object) -> str:
    """What a loaded YAML value is, in the words of someone writing YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def shown(value: object, limit: int = 40) -> str:
    """`value` quoted briefly for a message, booleans and null as YAML writes them."""
    if isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    else:
        text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f'"{text}"'


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' did you mean "x"?' when `word` is close to one of `choices`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' did you mean "{close[0]}"?' if close else ""


def unknown_key_message(key: object, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    hint = did_you_mean(key, allowed) if isinstance(key, str) else ""
    return f"unknown key {shown(key)};{hint} expected one of: {', '.join(allowed)}"


def unknown_value_message(value: object, allowed: Iterable[str], what: str = "value") -> str:
    allowed = list(allowed)
    hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
    return f"unknown {what} {shown(value)};{hint} expected one of: {', '.join(allowed)}"


def wrong_type_message(value: object, expected: str) -> str:
    if isinstance(value, dict | list) or value is None:
        return f"expected {expected}, got {type_name(value)}"
    return f"expected {expected}, got {type_name(value)} {shown(value)}"


def out_of_range_message(value: float, low: float | None, high: float | None, kind: str = "a number") -> str:
    if low is not None and high is not None:
        expected = f"between {low:g} and {high:g}"
    elif low is not None:
        expected = f"at least {low:g}"
    else:
        expected = f"at most {high:g}"
    return f"{value!r} is out of range; expected {kind} {expected}"


class Checker:
    """Validation helpers that raise `error(path, "<context>: <message>", line)`.

    `at` is the KeyPath of the value being checked; `what` names it for the reader
    (`rule "spam": probability`); the line comes from the LineMap.
    """

    __slots__ = ("error", "lines", "path")

    def __init__(self, path: Path | str | None, lines: LineMap, error: type[FileError]) -> None:
        self.path = Path(path) if path is not None else None
        self.lines = lines
        self.error = error

    def line(self, at: Sequence[Key]) -> int | None:
        return self.lines.line(at)

    def fail(self, at: Sequence[Key], what: str, message: str) -> NoReturn:
        raise self.error(self.path, f"{what}: {message}" if what else message, self.lines.line(at))

    def mapping(self, value: object, at: KeyPath, what: str) -> dict[str, object]:
        """`value` as a mapping with string keys, or an error expecting one."""
        if not isinstance(value, dict):
            self.fail(at, what, wrong_type_message(value, "a mapping (key: value)"))
        for key in value:
            if not isinstance(key, str):
                self.fail((*at, key), what, f"key {shown(key)} must be a string")
        return value

    def keys(
        self,
        value: Mapping[str, object],
        at: KeyPath,
        what: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> None:
        """Every key of `value` is in `allowed`; every key of `required` is present."""
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                self.fail((*at, key), what, unknown_key_message(key, allowed))
        for key in required:
            if key not in value:
                self.fail(at, what, f'missing key "{key}"')

    def string(self, value: object, at: KeyPath, what: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(at, what, wrong_type_message(value, "a string"))
        if not empty and not value.strip():
            self.fail(at, what, "expected a non-empty string")
        return value

    def boolean(self, value: object, at: KeyPath, what: str) -> bool:
        if not isinstance(value, bool):
            self.fail(at, what, wrong_type_message(value, "true or false"))
        return value

    def number(
        self,
        value: object,
        at: KeyPath,
        what: str,
        *,
        low: float | None = None,
        high: float | None = None,
    ) -> float:
        """An int or float (not a boolean, not NaN) within [low, high]."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(at, what, wrong_type_message(value, "a number"))
        if isinstance(value, float) and math.isnan(value):
            self.fail(at, what, "expected a number, got .nan")
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(at, what, out_of_range_message(value, low, high))
        return float(value)

    def integer(
        self,
        value: object,
        at: KeyPath,
        what: str,
        *,
        low: int | None = None,
        high: int | None = None,
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(at, what, wrong_type_message(value, "an integer"))
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(at, what, out_of_range_message(value, low, high, "an integer"))
        return value

    def choice(self, value: object, at: KeyPath, what: str, allowed: Iterable[str]) -> str:
        allowed = tuple(allowed)
        if not isinstance(value, str) or value not in allowed:
            self.fail(at, what, unknown_value_message(value, allowed))
        return value

    def sequence(self, value: object, at: KeyPath, what: str) -> list[object]:
        if not isinstance(value, list):
            self.fail(at, what, wrong_type_message(value, "a list"))
        return value
