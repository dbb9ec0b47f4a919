"""``selfinstruct train``: command-line options generated from :class:`TrainConfig`.

Every config field is an option (``lora_r`` → ``--lora-r``; booleans also get ``--no-…``), plus the short
aliases ``--output`` and ``--config FILE.yaml``. Command-line values override the file. Exit codes: 0 trained,
2 invalid configuration or dataset (the message names the field or file), 1 training failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from typing import Any

from pydantic import ValidationError

from pipeline.train.config import TrainConfig

log = logging.getLogger(__name__)

#: Extra spellings of some options, for brevity.
ALIASES: dict[str, list[str]] = {"output_dir": ["--output"]}
_CONFIG_FILE_DEST = "train_config_file"


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one option per :class:`TrainConfig` field to ``parser``."""
    parser.add_argument(
        "--config",
        dest=_CONFIG_FILE_DEST,
        metavar="FILE.yaml",
        help="YAML or JSON file of TrainConfig fields; options given here override it",
    )
    for name, field in TrainConfig.model_fields.items():
        flags = [_option(name), *ALIASES.get(name, [])]
        help_text = (field.description or "").replace("%", "%%")
        if not field.is_required():
            help_text += f" (default: {field.default!r})".replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            # Values stay strings here; pydantic converts and validates them with the file's values.
            parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar=_metavar(name, field.annotation),
                                help=help_text)


def _metavar(name: str, annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(annotation)) + "}"
    return name.upper()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments (file values overridden by options)."""
    overrides: dict[str, Any] = {name: getattr(args, name) for name in TrainConfig.model_fields if hasattr(args, name)}
    config_file = getattr(args, _CONFIG_FILE_DEST, None)
    if config_file:
        return TrainConfig.from_file(config_file, **overrides)
    return TrainConfig(**overrides)


def format_validation_error(error: ValidationError) -> str:
    """One line per invalid field, naming the field and its command-line option."""
    lines = ["invalid training configuration:"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "config"
        field = str(item["loc"][0]) if item["loc"] else ""
        option = f" ({_option(field)})" if field in TrainConfig.model_fields else ""
        lines.append(f"  {location}{option}: {item['msg']}")
    return "\n".join(lines)


def run_train_command(args: argparse.Namespace) -> int:
    """Run ``selfinstruct train`` for parsed ``args``; returns the process exit code."""
    from pipeline.train.data import DatasetError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        print(format_validation_error(exc), file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # unreadable or malformed --config file
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from pipeline.train.lora import train

    try:
        result = train(config)
    except (DatasetError, OSError) as exc:  # bad dataset, missing base model or template file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        log.exception("training failed")
        return 1
    print(json.dumps(result.summary(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m pipeline.train.cli --base-model … --dataset … --output …``."""
    parser = argparse.ArgumentParser(prog="selfinstruct train", description="LoRA / QLoRA fine-tuning")
    add_train_arguments(parser)
    return run_train_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
