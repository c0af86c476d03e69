from __future__ import annotations

import pytest

from lksup.fleet.templating import TemplateError, is_template, parse_set, render, set_value


def test_detects_template_syntax() -> None:
    assert is_template("a: {{ x }}")
    assert is_template("{% if x %}a: 1{% endif %}")
    assert is_template("{# comment #}")
    assert not is_template("a: {b: 1}")


def test_env_and_values() -> None:
    out = render(
        "url: {{ env.URL }}\nregion: {{ values.region }}\nother: {{ env.get('NOPE', 'x') }}\n",
        env={"URL": "wss://a"},
        values={"region": "eu"},
    )
    assert out.text == "url: wss://a\nregion: eu\nother: x\n"


def test_env_is_read_only() -> None:
    with pytest.raises(TemplateError):
        render("{% set _ = env.update({'A': 'b'}) %}", env={}, values={})


def test_sandbox_blocks_python_internals() -> None:
    with pytest.raises(TemplateError) as info:
        render("a: {{ ''.__class__.__mro__ }}\n", env={}, values={})
    assert info.value.line == 1


def test_undefined_variable_names_template_line_and_column() -> None:
    with pytest.raises(TemplateError) as info:
        render("a: 1\nb: {{ missing }}\n", env={}, values={})
    assert (info.value.line, info.value.col) == (2, 7)
    assert str(info.value) == "undefined template variable: 'missing' is not defined"


def test_undefined_environment_variable() -> None:
    with pytest.raises(TemplateError) as info:
        render("a: 1\n\nurl: {{ env.LIVEKIT_URL }}\n", env={}, values={})
    assert (info.value.line, info.value.col) == (3, 13)
    assert "'env.LIVEKIT_URL' is not defined" in str(info.value)


def test_loops_map_rendered_lines_back() -> None:
    out = render(
        "x:\n{% for n in [1, 2] %}\n  k{{ n }}: {{ n }}\n{% endfor %}\ny: 1\n", env={}, values={}
    )
    assert out.text.splitlines() == ["x:", "  k1: 1", "  k2: 2", "y: 1"]
    assert out.source_line(1) == (1, True)
    assert out.source_line(4) == (5, True)
    assert out.source_pos(3, 3)[0] in (2, 3)


def test_set_parsing() -> None:
    assert parse_set("a.b=c=d") == (["a", "b"], "c=d")
    with pytest.raises(ValueError, match="key=value"):
        parse_set("novalue")
    with pytest.raises(ValueError, match="key=value"):
        parse_set("a..b=1")
    values: dict[str, object] = {"a": 1}
    set_value(values, ["a", "b"], 2)
    assert values == {"a": {"b": 2}}
