"""A run's lifecycle, written once for the CLI, the Prefect flow and the benchmark.

:func:`run_generation` opens (locks, recovers) the run directory, starts the endpoints, calls a round hook until
the run is finished, marks the status, calls an export hook, and closes the run. The status and the export are
both written while the run is still locked. A failure marks the run ``failed`` with ``Type: message`` and is
re-raised. A run that stops short of its target is marked ``incomplete`` with the reason.

- The CLI (:func:`generate`) does everything in one round (:func:`run_to_end`) and exports with
  :func:`export_dataset`.
- The Prefect flow passes its ``generate-round`` task (``round_size`` requests a round) and its
  ``export-dataset`` task as the hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pipeline.config import GenerationConfig
from pipeline.generate import GenerationRun, LoopTimings, ProgressCallback, RoundResult
from pipeline.judge import judge_base_urls
from pipeline.llm import LLMClient
from pipeline.server import ManagedServer, ServerError

if TYPE_CHECKING:
    from pipeline.export import ExportResult

#: One round: send and consume some requests of ``run`` on these endpoints (``server``: the managed one, if any).
RoundHook = Callable[[GenerationRun, list[str], "ManagedServer | None"], RoundResult]
#: The export of a finished (or stopped) run directory, while the run is still locked.
ExportHook = Callable[[GenerationConfig], "ExportResult"]


@contextlib.contextmanager
def llm_endpoints(config: GenerationConfig) -> Iterator[tuple[list[str], ManagedServer | None]]:
    """The endpoints to use: ``llm.base_urls`` as given, or a managed vLLM server started for the run."""
    if config.llm.base_urls:
        yield list(config.llm.base_urls), None
        return
    server = ManagedServer(
        config.server, config.llm.model, config.run_dir / "server.log", api_key=config.llm.api_key.get_secret_value()
    )
    try:
        server.start()
        yield [server.base_url], server
    finally:
        server.stop()


def run_rounds(run: GenerationRun, base_urls: list[str], server: ManagedServer | None, max_requests: int | None) -> RoundResult:
    """Run one round (or, with ``max_requests=None``, everything) on a fresh event loop and client.

    A managed ``server`` is watched meanwhile: if it dies it is restarted while requests wait.
    """

    async def _round() -> RoundResult:
        client = LLMClient(run.config.llm, base_urls, rng_seed=run.config.seed)
        judge_client = None
        if run.judge is not None:
            judge_client = LLMClient(run.judge.llm_config, judge_base_urls(run.config, base_urls), rng_seed=run.config.seed + 1)
        clients = [c for c in (client, judge_client) if c is not None]
        watchdog = asyncio.create_task(_watch_server(server, clients)) if server is not None else None
        try:
            return await run.run_round(client, max_requests, judge_client)
        finally:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            for c in clients:
                await c.aclose()

    return asyncio.run(_round())


async def _watch_server(server: ManagedServer, clients: list[LLMClient], interval_s: float = 0.25) -> None:
    """Restart a managed server that died mid-run; requests wait (without spending retries) meanwhile."""
    while True:
        await asyncio.sleep(interval_s)
        if server.is_alive():
            continue
        for client in clients:
            client.pause()
        try:
            await asyncio.to_thread(server.restart)
        except ServerError as exc:
            for client in clients:
                client.fail(exc)
            return
        for client in clients:
            client.resume()


def run_to_end(run: GenerationRun, base_urls: list[str], server: ManagedServer | None) -> RoundResult:
    """The CLI's round hook: one round to the target or the request cap."""
    return run_rounds(run, base_urls, server, max_requests=None)


def export_dataset(config: GenerationConfig) -> ExportResult:
    """The export hook: the Alpaca JSON, and the HF dataset, charts and card as ``config.export`` asks."""
    from pipeline.export import export_run

    return export_run(config.run_dir, config.export.hf_dataset, config.export.charts, config.export.sample_rows)


def mark_status(run: GenerationRun, status: str, error: str | None = None) -> None:
    run.store.update_meta(status=status, error=error)


@dataclass
class GenerateSummary:
    run_dir: Path
    accepted: int
    requests: int
    reason: str
    export: ExportResult | None = None
    #: run.json as the run left it (status included).
    meta: dict[str, Any] = field(default_factory=dict)
    #: Event-loop time spent consuming and committing in this session.
    loop: LoopTimings = field(default_factory=LoopTimings)


def run_generation(
    config: GenerationConfig,
    on_progress: ProgressCallback | None = None,
    run_round: RoundHook = run_to_end,
    export: ExportHook | None = export_dataset,
) -> GenerateSummary:
    """Open (or resume) the run, call ``run_round`` until it is finished, mark its status, export, close.

    Seeds, template and output directory are checked before any server starts or request is sent.
    """
    run = GenerationRun(config, on_progress).open()
    try:
        reason = "already complete"
        try:
            if not run.finished:
                with llm_endpoints(config) as (base_urls, server):
                    while not run.finished:
                        reason = run_round(run, base_urls, server).reason
        except BaseException as exc:
            mark_status(run, "failed", f"{type(exc).__name__}: {exc}")
            raise
        if run.target_reached:
            mark_status(run, "completed")
        else:
            mark_status(run, "incomplete", run.stop_reason)
        exported = export(config) if export is not None else None
        meta = copy.deepcopy(run.store.meta)
        return GenerateSummary(config.run_dir, run.counts.accepted, run.counts.requests, reason, exported, meta, run.loop)
    finally:
        run.close()


def generate(config: GenerationConfig, on_progress: ProgressCallback | None = None, export: bool = True) -> GenerateSummary:
    """The whole pipeline without Prefect: :func:`run_generation` in one round, with or without the export."""
    return run_generation(config, on_progress, run_to_end, export_dataset if export else None)
