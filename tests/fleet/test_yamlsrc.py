from __future__ import annotations

import pytest

from lksup.fleet.yamlsrc import Pos, YamlError, parse


def test_positions_of_keys_and_values() -> None:
    data, positions = parse("a:\n  b: 1\n  c: [x, 'y']\n")
    assert data == {"a": {"b": 1, "c": ["x", "y"]}}
    assert positions.key(("a", "b")) == Pos(2, 3)
    assert positions.value(("a", "b")) == Pos(2, 6)
    assert positions.value(("a", "c", 1)) == Pos(3, 10)
    assert ("a", "c", 1) in positions.quoted
    assert positions.nearest(("a", "b", "missing")) == (("a", "b"), Pos(2, 6))


@pytest.mark.parametrize(
    ("text", "pos", "message"),
    [
        ("a: 1\na: 2\n", Pos(2, 1), "duplicate key 'a' (first defined at line 1, column 1)"),
        ("x:\n  a: 1\n  b: 2\n  a: 3\n", Pos(4, 3), "duplicate key 'a'"),
        ("a: [1\n", Pos(2, 1), "YAML syntax error"),
        ("? [a]\n: 1\n", Pos(1, 3), "mapping keys must be plain strings"),
        ("a: 1\n---\nb: 2\n", Pos(2, 1), "YAML syntax error"),
        # regression (found by tests/fuzz): a control character was a traceback, not a place
        ("a: 1\nb: x\x08y\n", Pos(2, 5), "character U+0008 is not allowed in YAML"),
    ],
)
def test_errors(text: str, pos: Pos, message: str) -> None:
    with pytest.raises(YamlError) as info:
        parse(text)
    assert info.value.pos == pos
    assert message in str(info.value)


def test_merge_keys_are_not_duplicates() -> None:
    data, _ = parse("base: &b {x: 1}\nthing:\n  <<: *b\n  y: 2\n")
    assert data["thing"] == {"x": 1, "y": 2}


def test_empty_document() -> None:
    assert parse("")[0] is None
