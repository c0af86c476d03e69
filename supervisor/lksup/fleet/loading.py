"""Loading a fleet file: read, render the template, parse YAML, validate, normalize.

Every problem becomes a ``Diagnostic`` at ``file:line:col`` of the file the user edits (the
template, not its rendering). All diagnostics of a stage are collected before failing, so one
run shows every error of a file; ``FleetError`` carries them. Nothing here resolves secrets or
imports user code (see ``secrets`` and ``imports``).
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel

from lksup.errors import Diagnostic, FleetError, Severity
from lksup.fleet import templating, yamlsrc
from lksup.fleet.normalize import deep_merge, normalize
from lksup.fleet.schema import Fleet, LoadExprValueError
from lksup.fleet.yamlsrc import Path, Pos, Positions


@dataclass
class LoadedFleet:
    """A valid fleet file: the fleet as written, its normalized form and its warnings."""

    path: str
    written: Fleet
    fleet: Fleet
    warnings: list[Diagnostic]
    positions: Positions
    rendered: templating.Rendered | None = None
    base_dir: FsPath = field(default_factory=FsPath.cwd)

    def locate(self, path: Path, *, key: bool = False) -> Diagnostic:
        """A diagnostic template (empty message) at the source position of ``path``."""
        return _locator(self.path, self.positions, self.rendered)(path, "", key=key)


def fleet_path(path: str) -> FsPath:
    """The absolute path of a fleet file, with its symlinks kept.

    A Kubernetes ConfigMap's file is a symlink through ``..data`` to a timestamped directory
    that the kubelet deletes on the next update: the file must be named, and its relative
    paths resolved, through the link, never through what it points to today.
    """
    return FsPath(os.path.abspath(path))


def load_values(files: list[str], assignments: list[str]) -> dict[str, Any]:
    """Merge ``--values`` files (in order) and then ``--set`` assignments.

    Raises:
        FleetError: a values file is unreadable or invalid, or an assignment is malformed.
    """
    values: dict[str, Any] = {}
    for name in files:
        text = _read(name)
        try:
            data, _ = yamlsrc.parse(text)
        except yamlsrc.YamlError as exc:
            raise FleetError([Diagnostic(name, exc.pos.line, exc.pos.col, str(exc))]) from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise FleetError([Diagnostic(name, 1, 1, "a values file must be a YAML mapping")])
        values = deep_merge(values, data)
    for assignment in assignments:
        try:
            parts, raw = templating.parse_set(assignment)
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (ValueError, yaml.YAMLError) as exc:
            raise FleetError([Diagnostic("--set", 0, 0, str(exc).splitlines()[0])]) from None
        templating.set_value(values, parts, value)
    return values


def load_fleet(
    path: str,
    *,
    values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    strict: bool = False,
) -> LoadedFleet:
    """Load, validate and normalize one fleet file.

    Raises:
        FleetError: the file is unreadable or invalid (every error found is in it); under
            ``strict`` warnings count as errors.
    """
    text = _read(path)
    rendered: templating.Rendered | None = None
    if templating.is_template(text):
        try:
            rendered = templating.render(
                text, env=os.environ if environ is None else environ, values=values or {}
            )
        except templating.TemplateError as exc:
            raise FleetError([Diagnostic(path, exc.line, exc.col, str(exc))]) from None
        text = rendered.text
    try:
        data, positions = yamlsrc.parse(text)
    except yamlsrc.YamlError as exc:
        line, col = _map_pos(rendered, exc.pos)
        raise FleetError([Diagnostic(path, line, col, str(exc))]) from None
    locate = _locator(path, positions, rendered)
    if not isinstance(data, dict):
        raise FleetError(
            [
                locate(
                    (),
                    "a fleet file is a YAML mapping with apiVersion, kind, metadata and agents",
                )
            ]
        )
    try:
        written = Fleet.model_validate(data)
    except pydantic.ValidationError as exc:
        raise FleetError(_validation_diagnostics(exc, locate, positions)) from None
    fleet, findings = normalize(written)
    diagnostics = [locate(f.path, f.message, key=f.key, severity=f.severity) for f in findings]
    if strict:
        diagnostics = [d.as_error() for d in diagnostics]
    errors = [d for d in diagnostics if d.severity is Severity.ERROR]
    if errors:
        raise FleetError(errors)
    base_dir = fleet_path(path).parent if path != "-" else FsPath.cwd()
    return LoadedFleet(
        path=path,
        written=written,
        fleet=fleet,
        warnings=sorted(set(diagnostics), key=lambda d: (d.line, d.col)),
        positions=positions,
        rendered=rendered,
        base_dir=base_dir,
    )


def _read(path: str) -> str:
    try:
        if path == "-":
            return FsPath("/dev/stdin").read_text(encoding="utf-8")
        return FsPath(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FleetError([Diagnostic(path, 0, 0, "no such file")]) from None
    except IsADirectoryError:
        raise FleetError([Diagnostic(path, 0, 0, "is a directory, not a fleet file")]) from None
    except OSError as exc:
        raise FleetError([Diagnostic(path, 0, 0, f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise FleetError([Diagnostic(path, 0, 0, f"not UTF-8 text ({exc.reason})")]) from None


def _map_pos(rendered: templating.Rendered | None, pos: Pos) -> tuple[int, int]:
    if rendered is None:
        return pos.line, pos.col
    return rendered.source_pos(pos.line, pos.col)


class _Locate(typing.Protocol):
    def __call__(
        self, path: Path, message: str, *, key: bool = False, severity: Severity = Severity.ERROR
    ) -> Diagnostic: ...


def _locator(file: str, positions: Positions, rendered: templating.Rendered | None) -> _Locate:
    def locate(
        path: Path, message: str, *, key: bool = False, severity: Severity = Severity.ERROR
    ) -> Diagnostic:
        _, pos = positions.nearest(path, key=key)
        line, col = _map_pos(rendered, pos)
        return Diagnostic(file, line, col, message, severity)

    return locate


def _validation_diagnostics(
    exc: pydantic.ValidationError, locate: _Locate, positions: Positions
) -> list[Diagnostic]:
    grouped: dict[tuple[Path, str], list[str]] = {}
    order: list[tuple[Path, str]] = []
    extra: list[Diagnostic] = []
    for error in exc.errors(include_url=False):
        loc: tuple[str | int, ...] = tuple(error["loc"])
        kind = error["type"]
        if kind == "missing":
            parent = loc[:-1]
            message = f"missing required field {loc[-1]!r}"
            if parent:
                message += f" in {_dotted(parent)}"
            extra.append(locate(parent, message, key=True))
            continue
        if kind == "extra_forbidden":
            extra.append(locate(loc, _unknown_field(loc), key=True))
            continue
        if loc and loc[-1] == "[key]":
            extra.append(locate(loc[:-1], _message(error), key=True))
            continue
        path = _existing_prefix(loc, positions)
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, LoadExprValueError):
            message = f"{_dotted(path)}: {_message(error)}"
            extra.append(_at_offset(locate(path, message), path, cause.offset, positions))
            continue
        group = (path, kind if len(path) == len(loc) else "union")
        if group not in grouped:
            grouped[group] = []
            order.append(group)
        grouped[group].append(_message(error))
    for group in order:
        messages = grouped[group]
        message = messages[0]
        for other in messages[1:]:
            message += " or " + other.removeprefix("Input should be ")
        extra.append(locate(group[0], f"{_dotted(group[0])}: {message}"))
    return extra


def _message(error: Any) -> str:
    message: str = error["msg"]
    message = message.removeprefix("Value error, ")
    if error["type"] in ("int_parsing", "float_parsing", "bool_parsing"):
        message = message.split(",")[0]
    return message


def _existing_prefix(loc: tuple[str | int, ...], positions: Positions) -> Path:
    for cut in range(len(loc), -1, -1):
        if positions.value(loc[:cut]) is not None:
            return loc[:cut]
    return ()


def _at_offset(diag: Diagnostic, path: Path, offset: int, positions: Positions) -> Diagnostic:
    quoted = 1 if path in positions.quoted else 0
    return Diagnostic(diag.file, diag.line, diag.col + quoted + offset, diag.message)


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path) if path else "fleet"


def _unknown_field(loc: tuple[str | int, ...]) -> str:
    name = str(loc[-1])
    known = _fields_at(loc[:-1])
    message = f"unknown field {name!r}"
    if loc[:-1]:
        message += f" in {_dotted(loc[:-1])}"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    elif known:
        message += f"; known fields: {', '.join(sorted(known))}"
    return message


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """The field names (by alias) of the model found at ``loc`` inside a Fleet."""
    current: Any = Fleet
    for part in loc:
        if typing.get_origin(_unwrap(current)) is dict:
            current = typing.get_args(_unwrap(current))[1]
            continue
        model = _model_of(current)
        if model is not None:
            info = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
            if info is None:
                return []
            current = info.annotation
            continue
        return []
    model = _model_of(current)
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        arg = _unwrap(arg)
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
