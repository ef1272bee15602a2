"""The base of lorakit's configuration schemas (pydantic v2).

Every config section is a `Schema`: frozen, unknown keys refused, and each field's docstring is its description,
which the command line shows as --help. `validate` turns pydantic's errors into one ConfigError that lists every
problem at once, each naming its dotted key. Config files are YAML (`read_yaml`); command-line values are YAML
scalars set at dotted keys (`apply_overrides`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lorakit.core.errors import ConfigError

T = TypeVar("T")

SCHEMA_CONFIG = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
"""The settings of every lorakit schema; plain dataclasses used as sections (LoraConfig) set the same keys in their
`__pydantic_config__`."""


class Schema(BaseModel):
    """A config section: frozen, unknown keys refused, field docstrings as descriptions."""

    model_config = SCHEMA_CONFIG

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:  # built directly in Python: the same ConfigError as a config file gets
            listed = "\n  - ".join(problems(e, type(self)))
            raise ConfigError(f"invalid {type(self).__name__}:\n  - {listed}") from None

    # Marks this __init__ as pydantic's own (as pydantic's RootModel does), so a section inside another schema
    # is still validated by pydantic itself, each error keeping its location, rather than through this __init__.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-ready nested dict of every field."""
        return self.model_dump(mode="json")


def validate(cls: type[T], data: Mapping[str, Any], what: str) -> T:
    """`cls` built from `data`; ConfigError listing every unknown key, bad type and bad value (as `what: ...`)."""
    try:
        return cls.model_validate(dict(data))  # type: ignore[attr-defined]
    except ValidationError as e:
        raise ConfigError(f"invalid {what}:\n  - " + "\n  - ".join(problems(e, cls))) from None


def problems(error: ValidationError, schema: type | None = None) -> list[str]:
    """One line per pydantic error: `section.key: message (got value)`; an unknown key lists the known ones."""
    out = []
    for e in error.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            known = _keys(schema, e["loc"][:-1]) if schema is not None else []
            parent = ".".join(str(p) for p in e["loc"][:-1])
            where_known = f"; {parent or schema.__name__} has {', '.join(known)}" if known else ""
            out.append(f"unknown key {where}{where_known}")
        elif e["type"] == "value_error" and "\n" in message:  # a dataclass section's own list (LoraConfig)
            out += [f"{where}.{line.strip(' -')}" if where else line.strip(" -")
                    for line in message.splitlines()[1:]]
        else:
            shown = e["type"] != "value_error" and "input" in e and not isinstance(e["input"], Mapping)
            got = f" (got {e['input']!r})" if shown else ""
            out.append(f"{where}: {message}{got}" if where else f"{message}{got}")
    return out


def _keys(schema: type, path: tuple) -> list[str]:
    """The field names of the section at `path` inside `schema` (a pydantic model or a dataclass)."""
    import dataclasses
    import typing

    for part in path:
        annotation = schema.model_fields[part].annotation if issubclass(schema, BaseModel) else next(
            (f.type for f in dataclasses.fields(schema) if f.name == part), None)
        while typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        if not isinstance(annotation, type):
            return []
        schema = annotation
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return list(schema.model_fields)
    return [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's mapping; ConfigError when it is missing, malformed or not a mapping."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; pass a YAML file such as configs/*.yaml")
    try:
        raw = yaml.load(file.read_text(), Loader=YamlLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{file} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must hold a YAML mapping of sections, found {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` with each dotted key ("train.lr") set to its value."""
    problems = []
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        target = raw.setdefault(head, {}) if rest else raw
        if not isinstance(target, dict):
            problems.append(f"cannot set {key}: {head} is not a section")
            continue
        target[rest or head] = value
    if problems:
        raise ConfigError("invalid overrides:\n  - " + "\n  - ".join(problems))
    return raw


def parse_value(text: Any) -> Any:
    """A command-line value read as a YAML scalar or flow collection: '2e-4' -> 0.0002, 'null' -> None."""
    return yaml.load(text, Loader=YamlLoader) if isinstance(text, str) else text


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads 2e-4 as a float (YAML 1.1 requires a dot: 2.0e-4)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


