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

from pipeline.settings import ConfigError, add_config_options, load_config, overrides_from_args
from pipeline.train.config import TrainConfig

log = logging.getLogger(__name__)

#: Extra spellings of some options, for brevity.
ALIASES: dict[str, list[str]] = {"output_dir": ["--output"]}
_CONFIG_FILE_DEST = "train_config_file"
_OPTIONS_DEST = "train_options"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one option per :class:`TrainConfig` field to ``parser``."""
    parser.add_argument(
        "--config",
        dest=_CONFIG_FILE_DEST,
        metavar="FILE.yaml",
        help="YAML or JSON file of TrainConfig fields; options given here override it",
    )
    parser.set_defaults(**{_OPTIONS_DEST: add_config_options(parser, TrainConfig, ALIASES)})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments (file values overridden by options)."""
    options = getattr(args, _OPTIONS_DEST)
    return load_config(TrainConfig, getattr(args, _CONFIG_FILE_DEST, None), overrides_from_args(args, options), options)


def run_train_command(args: argparse.Namespace) -> int:
    """Run ``selfinstruct train`` for parsed ``args``; returns the process exit code."""
    from pipeline.train.data import DatasetError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"invalid training configuration:\n{exc}", file=sys.stderr)
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
