"""Resolving secret references, and keeping resolved values out of every output.

References (``{env: NAME}``, ``{file: PATH}``) are resolved only when a connection or a
process is made, or when a user asks for the check (``validate --strict`` or
``--check-imports``). Errors name the reference, never a value. ``Redactor`` scrubs resolved
values from any text lksup prints that could contain them (for example the message of an
exception raised while importing user code with those values in its environment).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from lksup.errors import SecretError
from lksup.fleet.schema import EnvRef, FileRef, LiteralSecret, RedactedRef, SecretRef

MASK = "****"


def describe(ref: SecretRef) -> str:
    """How a reference is shown to users: ``{env: NAME}``, never a value."""
    if isinstance(ref, EnvRef):
        return f"{{env: {ref.env}}}"
    if isinstance(ref, FileRef):
        return f"{{file: {ref.file}}}"
    if isinstance(ref, RedactedRef):
        return f"{{redacted: {ref.redacted}}}"
    return f"literal ({ref.digest()})"


def resolve(
    ref: SecretRef | str, *, environ: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> str:
    """The value of a secret or env reference.

    Raises:
        SecretError: the variable is unset, the file is unreadable, or the value was redacted.
    """
    env = os.environ if environ is None else environ
    if isinstance(ref, str):
        return ref
    if isinstance(ref, LiteralSecret):
        return ref.value
    if isinstance(ref, EnvRef):
        if ref.env not in env:
            raise SecretError(f"environment variable {ref.env} is not set")
        return env[ref.env]
    if isinstance(ref, FileRef):
        path = Path(ref.file)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"cannot read secret file {ref.file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecretError(f"secret file {ref.file} is not UTF-8 text") from None
    raise SecretError(
        f"secret {ref.redacted} was redacted by `lksup render`; use {{env: NAME}} or "
        "{file: PATH} instead"
    )


class Redactor:
    """Replaces known secret values in text with ``****``."""

    MIN_LENGTH = 4  # shorter values would mask ordinary words; such secrets are not secret

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        for value in values:
            self.add(value)

    @property
    def values(self) -> frozenset[str]:
        """The values it masks."""
        return frozenset(self._values)

    def add(self, value: str) -> None:
        """Remember a value to scrub."""
        if len(value) >= self.MIN_LENGTH:
            self._values.add(value)

    def __call__(self, text: str) -> str:
        """The text with every known value masked (longest first)."""
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, MASK)
        return text
