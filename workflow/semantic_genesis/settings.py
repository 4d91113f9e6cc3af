"""The one way to build a frozen settings dataclass from a config mapping (`Settings.from_dict`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, ClassVar


def _converted(annotation: str, value: Any) -> Any:
    """A YAML value as the field's annotation wants it: lists become tuples (of floats or ints where annotated)."""
    if not isinstance(value, list) or not annotation.startswith("tuple"):
        return value
    if annotation.startswith("tuple[float"):
        return tuple(float(v) for v in value)
    if annotation.startswith("tuple[int"):
        return tuple(int(v) for v in value)
    return tuple(value)


class Settings:
    """Mixin of the package's frozen settings dataclasses.

    `from_dict` keeps the keys that are fields (a config section may hold others, e.g. preprocess.ct.splits),
    renames the config's names of fields through ALIASES (config name -> field name; a field given under its own
    name wins), turns lists into the tuples the fields are annotated with, and leaves absent fields at their
    defaults; the dataclass's __post_init__ then checks the values."""

    ALIASES: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """Build from a mapping such as a merged config section, ignoring keys that are not settings."""
        annotations = {f.name: str(f.type) for f in fields(cls)}
        chosen = {}
        for key, value in values.items():
            name = cls.ALIASES.get(key, key)
            if name in annotations and not (name != key and name in values):
                chosen[name] = _converted(annotations[name], value)
        return cls(**chosen)
