"""Typed configs from files and command lines: one loader, one error format, options derived from the models.

Every stage has one pydantic config (``GenerationConfig``, ``TrainConfig``). They are read from YAML or JSON files,
overridden by dotted keys (``{"llm.model": "x"}``) and validated here, and every problem is reported as
``SOURCE: field: message`` (with the command-line option when there is one). The command-line options of each
stage are derived from its config's fields, so a new field is an option without touching the CLI.
"""

from __future__ import annotations

import argparse
import copy
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

Config = TypeVar("Config", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the file (if any) and the field."""


def format_validation_error(exc: ValidationError, source: str, options: Mapping[str, str] | None = None) -> str:
    """One line per problem: ``source: field.path: message``, or ``source: field (--option): message``."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        option = (options or {}).get(field)
        lines.append(f"{source}: {field}{f' ({option})' if option else ''}: {err['msg']}")
    return "\n".join(lines)


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with dotted-key ``overrides`` (``{"llm.model": "x"}``) set in nested mappings."""
    data = copy.deepcopy(dict(data))
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``, or any other name) or JSON (``.json``) config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of fields, got {type(data).__name__}")
    return data


def load_config(
    model: type[Config],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    options: Mapping[str, str] | None = None,
) -> Config:
    """``model`` from an optional file plus dotted ``overrides``; :class:`ConfigError` names the source and field."""
    data = read_config_file(path) if path else {}
    return validate_config(model, apply_overrides(data, overrides or {}), str(path) if path else "command line", options)


def validate_config(model: type[Config], data: Mapping[str, Any], source: str, options: Mapping[str, str] | None = None) -> Config:
    """``model`` from ``data``; :class:`ConfigError` names ``source`` and each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, options)) from exc


# ---- command-line options derived from a config ------------------------------------------------------------------------
def option_name(dotted: str) -> str:
    return "--" + dotted.replace("_", "-")


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    aliases: Mapping[str, Sequence[str]] | None = None,
    prefix: str = "",
) -> dict[str, str]:
    """One option per field of ``model`` (nested models as ``--llm.model``); returns ``{dotted field: option}``.

    Values stay strings (lists repeat the option, dicts are JSON); pydantic converts and validates them together with
    the file's values. Secrets get no option: a command line is visible to every user of the machine.
    """
    options: dict[str, str] = {}
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = _unwrap_optional(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            options.update(add_config_options(parser, annotation, aliases, prefix=f"{dotted}."))
            continue
        if annotation is SecretStr:
            continue
        flags = [option_name(dotted), *(aliases or {}).get(dotted, [])]
        help_text = (field.description or "").replace("%", "%%")
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            help_text += f" (default: {default!r})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": dotted, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(annotation)
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            kwargs.update(action="append", metavar=name.upper().rstrip("S"))
        elif origin is dict:
            kwargs.update(type=json.loads, metavar="JSON")
        else:
            kwargs["metavar"] = _metavar(name, annotation)
        parser.add_argument(*flags, **kwargs)
        options[dotted] = flags[0]
    return options


def overrides_from_args(args: argparse.Namespace, options: Mapping[str, str]) -> dict[str, Any]:
    """The dotted-key overrides of the options that were given on the command line."""
    return {dotted: getattr(args, dotted) for dotted in options if hasattr(args, dotted)}


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _metavar(name: str, annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(annotation)) + "}"
    return name.upper()
