"""Fleet files as jinja2 templates.

A fleet file that contains jinja2 syntax (``{{``, ``{%`` or ``{#``) is rendered before it is
parsed as YAML. The template sees two names:

- ``env``: a read-only mapping of the environment (``{{ env.REGION }}``,
  ``{{ env.get("REGION", "eu") }}``);
- ``values``: the merge of ``--values FILE`` documents and ``--set key=value`` pairs.

Block tags (``{% ... %}``) on their own line leave no blank line behind (``trim_blocks``,
``lstrip_blocks``, as Ansible does). Rendering is strict (``StrictUndefined``: a missing
variable is an error, never an empty string) and sandboxed (templates cannot reach Python
internals). Errors carry the template's line. YAML errors found after rendering are mapped back
to template lines through ``Rendered.source_pos``: lines that rendered unchanged (or one-for-
one) map exactly; lines produced by a loop map to the most similar line of the template block
that produced them.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.sandbox

_MARKERS = ("{{", "{%", "{#")
_TEMPLATE_FILE = "<lksup-fleet-template>"
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


def is_template(text: str) -> bool:
    """Whether the text uses jinja2 syntax."""
    return any(marker in text for marker in _MARKERS)


class TemplateError(ValueError):
    """The template failed to render; ``line``/``col`` are 1-based positions in the template."""

    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(message)
        self.line = line
        self.col = col


@dataclass(frozen=True)
class Rendered:
    """A rendered template and the map from its lines back to the template's lines."""

    text: str
    source: str
    _line_map: tuple[tuple[int, bool], ...]

    def source_line(self, line: int) -> tuple[int, bool]:
        """(template line, exact) for a 1-based rendered line."""
        if 1 <= line <= len(self._line_map):
            return self._line_map[line - 1]
        return (line, False)

    def source_pos(self, line: int, col: int) -> tuple[int, int]:
        """The template position of a 1-based rendered position.

        The column is kept when the rendered line and its template line agree up to it (an
        error before or at the first substitution); otherwise it is 1.
        """
        source_line, exact = self.source_line(line)
        if exact:
            return source_line, col
        rendered = self.text.splitlines()
        template = self.source.splitlines()
        if line <= len(rendered) and source_line <= len(template):
            a, b = rendered[line - 1], template[source_line - 1]
            common = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            if col - 1 <= common:
                return source_line, col
        return source_line, 1


def render(text: str, *, env: Mapping[str, str], values: Mapping[str, Any]) -> Rendered:
    """Render a fleet template.

    Raises:
        TemplateError: a syntax error or an undefined variable, at its template line.
    """
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FunctionLoader(lambda _name: (text, _TEMPLATE_FILE, lambda: True)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    lines = text.splitlines()
    try:
        template = environment.get_template("fleet")
        output = template.render(env=types.MappingProxyType(dict(env)), values=dict(values))
    except jinja2.TemplateSyntaxError as exc:
        line = exc.lineno or 1
        raise TemplateError(
            f"template syntax error: {exc.message}", line, _first_tag_col(lines, line)
        ) from None
    except Exception as exc:  # anything the template's expressions raise is the template's error
        line = _template_line(exc)
        message = str(exc) or type(exc).__name__
        col = _name_col(lines, line, message)
        if isinstance(exc, jinja2.UndefinedError):
            message = f"undefined template variable: {_undefined_expression(lines, line, message)}"
        else:
            message = f"template error: {message}"
        raise TemplateError(message, line, col) from None
    return Rendered(output, text, _map_lines(lines, output.splitlines()))


def _template_line(exc: BaseException) -> int:
    line = 1
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _first_tag_col(lines: list[str], line: int) -> int:
    if 1 <= line <= len(lines):
        cols = [lines[line - 1].find(m) for m in _MARKERS if m in lines[line - 1]]
        if cols:
            return min(cols) + 1
    return 1


def _name_col(lines: list[str], line: int, message: str) -> int:
    match = _UNDEFINED_NAME.search(message)
    if match and 1 <= line <= len(lines):
        name = match.group(1) or match.group(2)
        found = lines[line - 1].find(name)
        if found >= 0:
            return found + 1
    return _first_tag_col(lines, line)


def _undefined_expression(lines: list[str], line: int, message: str) -> str:
    """``values.regoin`` rather than jinja2's "'dict object' has no attribute 'regoin'"."""
    match = _UNDEFINED_NAME.search(message)
    if match is None or not 1 <= line <= len(lines):
        return message
    if match.group(1):
        return f"{match.group(1)!r} is not defined"
    attr = match.group(2)
    dotted = re.search(rf"([A-Za-z_][\w.]*)\.{re.escape(attr)}\b", lines[line - 1])
    if dotted is None:
        return message
    return f"{dotted.group(0)!r} is not defined (no key {attr!r} in {dotted.group(1)})"


def _map_lines(source: list[str], rendered: list[str]) -> tuple[tuple[int, bool], ...]:
    mapping: list[tuple[int, bool]] = []
    matcher = difflib.SequenceMatcher(a=source, b=rendered, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and a1 - a0 == b1 - b0):
            mapping.extend((a0 + i + 1, tag == "equal") for i in range(b1 - b0))
        elif a0 == a1:  # lines with no template counterpart: attribute to the line before
            mapping.extend((max(a0, 1), False) for _ in range(b1 - b0))
        else:  # e.g. a loop body rendered n times: each line maps to its most similar origin
            for rendered_line in rendered[b0:b1]:
                best = max(
                    range(a0, a1),
                    key=lambda i: difflib.SequenceMatcher(a=source[i], b=rendered_line).ratio(),
                )
                mapping.append((best + 1, False))
    return tuple(mapping)


def parse_set(assignment: str) -> tuple[list[str], str]:
    """Split ``--set a.b=c`` into (["a", "b"], "c").

    Raises:
        ValueError: the assignment has no ``=`` or an empty key.
    """
    key, sep, value = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(f"--set expects key=value (dotted keys allowed), not {assignment!r}")
    return parts, value


def set_value(values: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``values[a][b]... = value``, creating intermediate mappings."""
    current = values
    for part in parts[:-1]:
        nxt = current.get(part)
        if not isinstance(nxt, dict):
            nxt = current[part] = {}
        current = nxt
    current[parts[-1]] = value
