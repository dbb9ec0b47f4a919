"""The `train-alpaca` flow: LoRA / QLoRA fine-tuning on an Alpaca-format dataset.

One coarse task runs the whole training job in the flow-run process (no subprocess), so cancelling or
crashing the flow run ends the training with it; Prefect's results are not used for the model, everything
is written to ``output_dir``. Artifacts (loss table, report, sample generations, progress) come from
:mod:`pipeline.report`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from pipeline.train import TrainConfig, train


@task(name="train-lora", cache_policy=NONE)
def train_job(config: TrainConfig) -> dict[str, Any]:
    """Run one fine-tuning job and return its paths and headline metrics."""
    return train(config).summary()


def deployment_config_defaults(deployment_id: str | None = None) -> dict[str, Any]:
    """The ``config`` parameter stored on the deployment of the current flow run ({} outside deployments)."""
    if deployment_id is None:
        from prefect.runtime import deployment

        deployment_id = deployment.id
    if not deployment_id:
        return {}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        parameters = client.read_deployment(deployment_id).parameters or {}
    defaults = parameters.get("config")
    return defaults if isinstance(defaults, dict) else {}


def with_deployment_defaults(config: TrainConfig, defaults: dict[str, Any]) -> TrainConfig:
    """``config`` with the fields its caller left out taken from ``defaults`` (the deployment's config).

    Prefect replaces a deployment's ``config`` parameter as a whole, so
    ``run_deployment("train-alpaca/koalpaca", parameters={"config": {"dataset": ...}})`` would otherwise lose
    the deployment's base model and template. Fields the caller set explicitly win.
    """
    if not defaults:
        return config
    explicit = config.model_dump(mode="json", include=config.model_fields_set)
    return TrainConfig(**{**defaults, **explicit})


@flow(name="train-alpaca", log_prints=True)
def train_alpaca(config: TrainConfig) -> dict[str, Any]:
    """Fine-tune a base model with LoRA or QLoRA on a self-instruct dataset (Alpaca or KoAlpaca format)."""
    config = with_deployment_defaults(config, deployment_config_defaults()).resolved()
    logger = get_run_logger()
    logger.info("training %s with %s on %s -> %s", config.base_model, config.method, config.dataset, config.output_dir)
    result = train_job(config)
    logger.info("adapter: %s (loss %s -> %s)", result["adapter_file"], result["first_loss"], result["final_loss"])
    return result


if __name__ == "__main__":
    import sys

    train_alpaca(TrainConfig.model_validate_json(sys.argv[1]))
