"""Settings fields that hold a :class:`~pathlib.Path` and accept any path-like value.

A user writes ``ServerSettings(..., ca_file="ca.pem")``; the code that reads
the settings wants a ``Path``. A plain dataclass field has one type for both,
so a ``Path | None`` field makes type checkers reject the string, and a
``str | os.PathLike[str] | None`` field makes every reader narrow it.
:class:`OptionalPathField` is a data descriptor instead: dataclasses pass
the ``__init__`` argument to ``__set__`` (typed ``str | os.PathLike[str] |
None``) and reads go through ``__get__`` (typed ``Path | None``), which is
how type checkers see descriptor-typed dataclass fields too (the typing
spec's dataclass chapter). The value is stored, already a ``Path``, in the
instance's ``__dict__`` under the field's own name, so equality, hashing,
``repr``, ``dataclasses.replace`` and pickling see an ordinary field, and
frozen dataclasses still refuse assignment after ``__init__``.

A required path cannot be a descriptor: type checkers take the descriptor
assigned in the class body for a default and would stop reporting a missing
argument. :class:`~.settings.CertificateSettings` keeps plain ``Path`` fields,
converted with :func:`as_path` in ``__post_init__``, and declares the
``__init__`` that type checkers see.

A value that is not a path is a :class:`~.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, overload

from .errors import ConfigError

__all__ = ["OptionalPathField", "PathInput", "as_path", "show_path_inputs"]

PathInput = str | os.PathLike[str]
"""What a settings path field accepts."""


def as_path(value: object, name: str) -> Path:
    """*value* as a Path; ConfigError naming the field *name* if it is not path-like."""
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise ConfigError(f"{name} must be a path, not {type(value).__name__}")


class OptionalPathField:
    """A path that may be unset: ``ca_file: OptionalPathField = OptionalPathField()`` (None)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> None: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Path | None: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> Path | None:
        if obj is None:
            return None  # read by dataclasses as the field's default
        value: Path | None = vars(obj)[self._name]
        return value

    def __set__(self, obj: object, value: PathInput | None) -> None:
        vars(obj)[self._name] = None if value is None else as_path(value, self._name)


_Class = TypeVar("_Class", bound=type)


def show_path_inputs(*required: str) -> Callable[[_Class], _Class]:
    """Class decorator: ``__init__``'s annotations say what path fields accept.

    The generated ``__init__`` of a dataclass is annotated with the field
    types, which for these fields is ``OptionalPathField`` (or ``Path`` for
    the *required* ones, converted in ``__post_init__``). ``help()`` and the
    API reference read those annotations, so they are replaced by the types
    accepted. Type checkers do not look at them (they see the descriptors).
    """

    def decorate(cls: _Class) -> _Class:
        hints = vars(cls)["__init__"].__annotations__
        for name, hint in hints.items():
            if hint in ("OptionalPathField", OptionalPathField):
                hints[name] = "str | os.PathLike[str] | None"
            elif name in required:
                hints[name] = "str | os.PathLike[str]"
        return cls

    return decorate
