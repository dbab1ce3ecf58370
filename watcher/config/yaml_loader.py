"""The strict YAML loader: YAML 1.1 surprises off, the line of every key and item kept.

Also the alias-bomb measure and the index of `rules[2].title`-style paths to lines.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from watcher.errors import ConfigError


class Map(dict[str, Any]):
    """A YAML mapping that remembers where it starts, where each key is, and repeated keys."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}
        self.duplicates: list[tuple[str, int, int]] = []  # key, line, first line


class Seq(list[Any]):
    """A YAML sequence that remembers the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 surprises, keeping the line of every key and item.

    Only `true`/`false` (any case) are booleans and only `~`/`null`/empty are null; everything
    else plain is a string (so `on`, `no`, `0600`, `1:30` stay as written). Other tags fail.
    """


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _construct_map(loader: StrictLoader, node: Node) -> Map:
    if not isinstance(node, MappingNode):
        raise ConstructorError(None, None, "expected a mapping", node.start_mark)
    mapping = Map(_line(node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key == "<<" and isinstance(key_node, ScalarNode) and key_node.style is None:
            raise ConstructorError(
                None, None, "YAML merge keys (<<) are not supported", key_node.start_mark
            )
        if not isinstance(key, str):
            raise ConstructorError(
                None, None, f"keys must be strings, found {kind(key)}", key_node.start_mark
            )
        value = loader.construct_object(value_node, deep=True)
        line = _line(key_node)
        if key in mapping:
            mapping.duplicates.append((key, line, mapping.key_lines[key]))
            continue
        mapping[key] = value
        mapping.key_lines[key] = line
    return mapping


def _construct_seq(loader: StrictLoader, node: Node) -> Seq:
    if not isinstance(node, SequenceNode):
        raise ConstructorError(None, None, "expected a sequence", node.start_mark)
    seq = Seq(_line(node))
    for item in node.value:
        seq.append(loader.construct_object(item, deep=True))
        seq.item_lines.append(_line(item))
    return seq


def _construct_str(loader: StrictLoader, node: Node) -> str:
    if not isinstance(node, ScalarNode):
        raise ConstructorError(None, None, "expected a scalar", node.start_mark)
    return loader.construct_scalar(node)


def _construct_bool(loader: StrictLoader, node: Node) -> bool:
    value = _construct_str(loader, node).lower()
    if value not in ("true", "false"):
        raise ConstructorError(None, None, "expected true or false", node.start_mark)
    return value == "true"


def _construct_null(loader: StrictLoader, node: Node) -> None:
    if _construct_str(loader, node) not in ("", "~", "null", "Null", "NULL"):
        raise ConstructorError(None, None, "expected null", node.start_mark)


def _construct_other(loader: StrictLoader, node: Node) -> NoReturn:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise ConstructorError(None, None, f"unsupported YAML tag {tag!r}", node.start_mark)


StrictLoader.yaml_implicit_resolvers = {}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"),
    list("tTfF"),
)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
StrictLoader.yaml_constructors = {
    "tag:yaml.org,2002:map": _construct_map,
    "tag:yaml.org,2002:seq": _construct_seq,
    "tag:yaml.org,2002:str": _construct_str,
    "tag:yaml.org,2002:bool": _construct_bool,
    "tag:yaml.org,2002:null": _construct_null,
    None: _construct_other,
}
StrictLoader.yaml_multi_constructors = {}


def parse_yaml(text: str, path: str) -> Any:
    loader: StrictLoader | None = None
    try:
        loader = StrictLoader(text)  # the reader checks every character here already
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if "'\\t'" in problem:
            problem = "tab characters are not allowed for indentation in YAML; use spaces"
        elif exc.context and exc.problem:
            problem = f"{exc.context}: {exc.problem}"
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {problem}", file=path, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        problem = f"invalid YAML: unacceptable character #x{exc.character:04x}"
        raise ConfigError(problem, file=path, line=line) from None
    except yaml.YAMLError:
        raise ConfigError("invalid YAML", file=path, line=1) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=path, line=1) from None
    finally:
        if loader is not None:
            loader.dispose()


def expanded_size(value: Any, memo: dict[int, int]) -> int:
    """How many values the document holds once every alias is expanded (linear time: a shared
    node is measured once). An alias bomb fits in a few kB and expands to billions."""
    if not isinstance(value, Map | Seq):
        return 1
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = 1  # a recursive alias counts once; the reader refuses it later anyway
    children = value.values() if isinstance(value, Map) else value
    memo[id(value)] = 1 + sum(expanded_size(child, memo) for child in children)
    return memo[id(value)]


def at_key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def at_index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def index_lines(
    value: Any,
    path: str,
    file: str,
    lines: dict[str, int],
    duplicates: list[ConfigError],
    seen: set[int],
) -> None:
    """Record the line of every key and item, and every repeated key, walking shared nodes once."""
    if not isinstance(value, Map | Seq) or id(value) in seen:
        return
    seen.add(id(value))
    lines.setdefault(path, value.line)
    if isinstance(value, Map):
        for key, line, first in value.duplicates:
            problem = f"duplicate key {key!r} (first at line {first})"
            duplicates.append(ConfigError(problem, file=file, line=line, key=at_key(path, key)))
        for key, child in value.items():
            lines.setdefault(at_key(path, key), value.key_lines[key])
            index_lines(child, at_key(path, key), file, lines, duplicates, seen)
    else:
        for index, child in enumerate(value):
            lines.setdefault(at_index(path, index), value.item_lines[index])
            index_lines(child, at_index(path, index), file, lines, duplicates, seen)


def kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
