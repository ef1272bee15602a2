"""Command-line options generated from config schemas: each field is an option, its docstring the help.

Sectioned configs (lorakit train, compare) get `--section.field VALUE` for each field of each section, flat ones
(a command's own options) get `--field-name VALUE`. Values are read as YAML scalars ("2e-4", "null", "true") except
for text fields, which keep the text as typed ("null" is None where the field allows it); a list field also takes
comma-separated items (`--methods lora,full`) and a mapping field `key=value` pairs.
Nothing is validated here: the schema does that, reporting every problem at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

from pydantic import TypeAdapter

T = TypeVar("T")
SECTION = "::"
"""Separator of an option's dest between its section and field, read back by `given`."""


@cache
def fields(schema: type) -> dict[str, dict[str, Any]]:
    """Each field's JSON-schema property (with "description", "default", "type"/"anyOf"), nested sections resolved
    to their own property dicts under "section"."""
    full = TypeAdapter(schema).json_schema(mode="validation")
    defs = full.get("$defs", {})

    def resolve(prop: dict[str, Any]) -> dict[str, Any]:
        ref = prop.get("$ref") or next((p["$ref"] for p in prop.get("allOf", []) if "$ref" in p), None)
        if ref is None:
            return prop
        target = defs[ref.rsplit("/", 1)[1]]
        return {**prop, "section": {k: resolve(v) for k, v in target.get("properties", {}).items()},
                "description": prop.get("description") or target.get("description", "")}

    return {name: resolve(prop) for name, prop in full.get("properties", {}).items()}


def add_flat(parser: argparse.ArgumentParser, schema: type, skip: tuple[str, ...] = ()) -> None:
    """`--field-name VALUE` for each field of a flat schema (required fields are required options); a boolean
    field that defaults to false is a plain switch (`--overwrite`)."""
    required = set(TypeAdapter(schema).json_schema(mode="validation").get("required", ()))
    for name, prop in fields(schema).items():
        if name in skip:
            continue
        flag = f"--{name.replace('_', '-')}"
        if prop.get("type") == "boolean" and prop.get("default") is False:
            parser.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS,
                                help=_help({k: v for k, v in prop.items() if k != "default"}))
            continue
        parser.add_argument(flag, dest=name, metavar="VALUE", required=name in required, default=argparse.SUPPRESS,
                            help=_help(prop))


def add_sections(parser: argparse.ArgumentParser, schema: type, section_defaults: Mapping[str, Mapping] = {},
                 top: tuple[str, ...] = ()) -> None:
    """`--field VALUE` for the schema's plain fields named in `top` (others: `--field-name`), and `--section.field
    VALUE` for each field of each nested section, grouped under the section's name. `section_defaults` are shown
    in place of a section's own defaults where the schema overrides them."""
    required = set(TypeAdapter(schema).json_schema(mode="validation").get("required", ()))
    for name, prop in fields(schema).items():
        if "section" not in prop:
            flag = f"--{name}" if name in top else f"--{name.replace('_', '-')}"
            parser.add_argument(flag, dest=name, metavar="VALUE", default=argparse.SUPPRESS,
                                required=name in required, help=_help(prop))
            continue
        group = parser.add_argument_group(f"{name} settings", prop.get("description") or None)
        overrides = section_defaults.get(name, {})
        for field, sub in prop["section"].items():
            shown = {**sub, "default": overrides[field]} if field in overrides else sub
            group.add_argument(f"--{name}.{field}", dest=f"{name}{SECTION}{field}", metavar="VALUE",
                               default=argparse.SUPPRESS, help=_help(shown))


def given(args: argparse.Namespace, schema: type) -> dict[str, Any]:
    """The schema's options the command line gave, by dotted key ("train.lr"), each value read as its field's
    type expects (ready for core.schema.apply_overrides)."""
    props = fields(schema)
    out: dict[str, Any] = {}
    for dest, text in vars(args).items():
        section, _, field = dest.partition(SECTION)
        if field and section in props and "section" in props[section]:
            out[f"{section}.{field}"] = read(text, props[section]["section"].get(field, {}))
        elif not field and dest in props:
            out[dest] = read(text, props[dest])
    return out


def options(args: argparse.Namespace, schema: type[T]) -> T:
    """The command's options of a flat `schema`, validated (every problem listed in one ConfigError)."""
    from lorakit.core.schema import validate

    return validate(schema, given(args, schema), "options")


def read(text: Any, prop: Mapping[str, Any]) -> Any:
    """A command-line value as the field's type expects it: YAML, plus comma lists and key=value mappings."""
    from lorakit.train.config import parse_value

    if not isinstance(text, str):
        return text
    kinds = {prop.get("type")} | {p.get("type") for p in prop.get("anyOf", ())}
    kinds.discard(None)
    if kinds <= {"string", "null"} and kinds:  # a text field keeps the text as typed: --api-key "", --model 1.0
        return None if "null" in kinds and text == "null" else text
    stripped = text.strip()
    if "array" in kinds and "string" not in kinds and not stripped.startswith("[") and stripped != "null":
        return [parse_value(item.strip()) for item in stripped.split(",") if item.strip()]
    if kinds == {"object"} and "=" in stripped and not stripped.startswith("{"):
        pairs = (item.partition("=") for item in stripped.split(",") if item.strip())
        return {key.strip(): parse_value(value.strip()) for key, _, value in pairs}
    return parse_value(text)


def _help(prop: Mapping[str, Any]) -> str:
    text = " ".join(str(prop.get("description", "")).split())
    if "default" in prop:
        default = prop["default"]
        shown = (",".join(map(str, default)) or "[]") if isinstance(default, list) else default
        text += f" (default: {'null' if shown is None else shown})"
    return text.replace("%", "%%")
