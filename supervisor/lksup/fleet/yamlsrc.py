"""YAML with positions: parse text into plain data plus a map from paths to 1-based positions.

PyYAML's ``safe_load`` silently keeps the last of duplicate keys and forgets where anything
came from. Fleet files need both: a duplicate agent key is an error, and every error must name
``file:line:col``. This module composes the node tree once, walks it to record positions and
reject duplicate keys, then constructs the data from the same nodes.

A path is a tuple of mapping keys and sequence indexes, e.g. ``("agents", "sales", "load")``.
``Positions.value(path)`` is where the value starts; ``Positions.key(path)`` is where its key
starts (used for "unknown field" and "missing field" errors).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Pos:
    """A 1-based line and column."""

    line: int
    col: int


@dataclass
class Positions:
    """Where each path's key and value start in the source text."""

    keys: dict[Path, Pos] = field(default_factory=dict)
    values: dict[Path, Pos] = field(default_factory=dict)
    quoted: set[Path] = field(default_factory=set)

    def value(self, path: Path) -> Pos | None:
        """Where the value at ``path`` starts, if the path is in the source."""
        return self.values.get(path)

    def key(self, path: Path) -> Pos | None:
        """Where the key of ``path`` starts (the value's position for sequence items)."""
        return self.keys.get(path) or self.values.get(path)

    def nearest(self, path: Path, *, key: bool = False) -> tuple[Path, Pos]:
        """The position of ``path`` or of its closest ancestor that is in the source."""
        for cut in range(len(path), -1, -1):
            prefix = path[:cut]
            found = self.key(prefix) if key and cut == len(path) else self.value(prefix)
            if found is not None:
                return prefix, found
        return (), Pos(1, 1)


class YamlError(ValueError):
    """The text is not valid YAML, or repeats a key. Carries a 1-based position."""

    def __init__(self, message: str, pos: Pos) -> None:
        super().__init__(message)
        self.pos = pos


def parse(text: str) -> tuple[Any, Positions]:
    """Parse one YAML document into plain data and its positions.

    Raises:
        YamlError: syntax error, several documents, a duplicate key, or a non-string key.
    """
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. a control
        raise YamlError(
            f"YAML error: character U+{exc.character:04X} is not allowed in YAML",
            _offset_pos(text, exc.position),
        ) from None
    try:
        node = loader.get_single_node()
        positions = Positions()
        if node is None:
            return None, positions
        _walk(node, (), positions)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Pos(mark.line + 1, mark.column + 1) if mark else Pos(1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{problem} ({exc.context})"
        raise YamlError(f"YAML syntax error: {problem}", pos) from None
    except yaml.YAMLError as exc:  # errors without a mark, e.g. bad unicode
        raise YamlError(f"YAML error: {exc}", Pos(1, 1)) from None
    finally:
        loader.dispose()
    return data, positions


def _offset_pos(text: str, offset: int) -> Pos:
    """The 1-based line and column of character ``offset`` of ``text``."""
    line_start = text.rfind("\n", 0, offset) + 1
    return Pos(text.count("\n", 0, offset) + 1, offset - line_start + 1)


def _pos(node: yaml.Node) -> Pos:
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1)


def _walk(node: yaml.Node, path: Path, positions: Positions) -> None:
    positions.values.setdefault(path, _pos(node))
    if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
        positions.quoted.add(path)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Hashable, Pos] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError("mapping keys must be plain strings", _pos(key_node))
            key = key_node.value
            if key in seen:
                first = seen[key]
                raise YamlError(
                    f"duplicate key {key!r} (first defined at line {first.line}, "
                    f"column {first.col}); YAML keeps only the last one",
                    _pos(key_node),
                )
            seen[key] = _pos(key_node)
            positions.keys[(*path, key)] = _pos(key_node)
            _walk(value_node, (*path, key), positions)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), positions)
