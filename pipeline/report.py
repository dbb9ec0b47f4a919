"""Reporting to Prefect: artifacts and progress. The only module of ``pipeline`` that imports Prefect.

Every function is a no-op outside a Prefect flow or task run, so the same library code serves the CLI,
the flows and the tests. Artifact keys must be lowercase letters, digits and dashes; :func:`artifact_key`
makes one from any run name.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping
from uuid import UUID

from pipeline import quality, tables
from pipeline.charts import data_uri

log = logging.getLogger(__name__)

#: Progress updates are HTTP calls; made from the generation loop's thread they would stall its event loop.
_PROGRESS_SENDER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefect-progress")


def in_prefect_run() -> bool:
    """True inside a Prefect flow run or task run."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover - prefect is a core dependency
        return False
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(*parts: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) built from ``parts``."""
    text = "-".join(parts).lower()
    text = re.sub(r"[^a-z0-9-]+", "-", text)
    return re.sub(r"-{2,}", "-", text).strip("-") or "artifact"


def markdown(key: str, text: str, description: str | None = None) -> UUID | None:
    if not in_prefect_run():
        return None
    from prefect.artifacts import create_markdown_artifact

    return create_markdown_artifact(markdown=text, key=artifact_key(key), description=description, _sync=True)


def table(key: str, rows: Iterable[Mapping[str, Any]], description: str | None = None) -> UUID | None:
    if not in_prefect_run():
        return None
    from prefect.artifacts import create_table_artifact

    clean = [{k: _cell(v) for k, v in row.items()} for row in rows]
    return create_table_artifact(table=clean, key=artifact_key(key), description=description, _sync=True)


def link(key: str, target: str, text: str | None = None, description: str | None = None) -> UUID | None:
    if not in_prefect_run():
        return None
    from prefect.artifacts import create_link_artifact

    return create_link_artifact(link=target, link_text=text, key=artifact_key(key), description=description, _sync=True)


class Progress:
    """A Prefect progress artifact (0-100 %), created lazily on the first update inside a run.

    Outside a run it only remembers the last value, so callers need no branches.
    """

    def __init__(self, key: str, description: str | None = None, min_interval_s: float = 2.0):
        self.key = artifact_key(key)
        self.description = description
        self.min_interval_s = min_interval_s
        self.value = 0.0
        self._id: UUID | None = None
        self._last_sent = 0.0
        self._pending: concurrent.futures.Future | None = None

    def update(self, percent: float) -> None:
        """Record progress; sent to Prefect at most every ``min_interval_s`` (and always at 100 %).

        Sent from a background thread, so a slow API never holds up the caller; the 100 % update waits until
        it is on the server. While one update is on its way, later ones are skipped (the next carries the newest).
        """
        self.value = max(0.0, min(100.0, float(percent)))
        now = time.monotonic()
        final = self.value >= 100.0
        if not in_prefect_run() or (now - self._last_sent < self.min_interval_s and not final):
            return
        if self._pending is not None and not self._pending.done() and not final:
            return
        self._last_sent = now
        future = _PROGRESS_SENDER.submit(contextvars.copy_context().run, self._send, self.value)
        if final:
            future.result()
        else:
            self._pending = future

    def _send(self, value: float) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self._id is None:
                self._id = create_progress_artifact(progress=value, key=self.key, description=self.description, _sync=True)
            else:
                update_progress_artifact(artifact_id=self._id, progress=value, _sync=True)
        except Exception as exc:  # a reporting hiccup must never fail the data run
            log.warning("could not update progress artifact %s: %s", self.key, exc)


#: Longest text shown in a table artifact's cell: longer ones made the samples table wider than the page.
MAX_CELL_CHARS = 160


def _clip_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v[: MAX_CELL_CHARS - 1] + "…" if isinstance(v, str) and len(v) > MAX_CELL_CHARS else v for k, v in row.items()}


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def publish_dataset_artifacts(run_name: str, run_meta: Mapping[str, Any], export: Any) -> list[str]:
    """Keyed artifacts for one dataset, so the Prefect UI keeps a version history per run name.

    ``export`` is a :class:`pipeline.export.ExportResult`. Returns the keys written (empty outside a run).
    """
    if not in_prefect_run():
        return []
    stats = export.stats
    base = artifact_key(run_name)
    keys = {
        "summary": f"{base}-summary",
        "report": f"{base}-report",
        "funnel": f"{base}-funnel",
        "figures": f"{base}-figures",
        "verbs": f"{base}-verbs",
        "samples": f"{base}-samples",
        "rejected": f"{base}-rejected",
        "reasons": f"{base}-rejection-reasons",
        "lengths": f"{base}-lengths",
        "dataset": f"{base}-dataset",
    }
    markdown(
        keys["summary"],
        f"""# Self-instruct run `{run_name}`

{tables.counts_table(run_meta, stats)}

## Rejected, by reason
{tables.reasons_table(stats.rejected_by_reason)}

## Curation steps
{tables.steps_table(run_meta.get("counts", {}).get("steps", {}))}

## Faults (retried or recorded)
{tables.faults_table(run_meta.get("faults", {}))}

Dataset: `{export.alpaca_json}`
""",
        description=f"Counts, tokens and throughput of {run_name}",
    )
    quality_report = export.report
    if quality_report:
        # Charts travel inside the markdown as data URIs: the UI renders them without access to the run directory.
        charts = {Path(p).stem: data_uri(p) for p in export.charts}
        markdown(keys["report"], f"# Quality report of `{run_name}`\n\n{quality.markdown(quality_report, charts)}",
                 description=f"Yield, cost, diversity, shape and quality of {run_name}, beside Self-Instruct's and Alpaca's figures")
        table(keys["funnel"], quality_report["funnel"], description=f"Funnel of {run_name}: requests to accepted records")
        header, rows = quality.figure_rows([quality_report])
        table(keys["figures"], [dict(zip(header, row)) for row in rows],
              description=f"Every figure of {run_name} beside the published ones")
        table(keys["verbs"], [{"verb": v["verb"], "count": v["count"], "objects": ", ".join(v["objects"])} for v in quality_report["verbs"]["top"]],
              description=f"Root verbs and their direct objects, {run_name}")
    table(keys["samples"], [_clip_row(row) for row in stats.samples], description=f"Random accepted records of {run_name}")
    table(keys["rejected"], [_clip_row(row) for row in stats.rejected_samples],
          description=f"Random rejected candidates of {run_name}, with the step, reason and evidence")
    table(keys["reasons"], [{"reason": r, "count": n} for r, n in stats.rejected_by_reason.items()],
          description=f"Rejections by reason, {run_name}")
    table(keys["lengths"], [{"field": f, **s} for f, s in stats.lengths.items()], description=f"Length distribution (words), {run_name}")
    link(keys["dataset"], Path(export.run_dir).resolve().as_uri(), text=str(export.alpaca_json), description=f"Dataset files of {run_name}")
    return list(keys.values())


DATASET_READY_EVENT = "selfinstruct.dataset.ready"


def emit_dataset_ready(run_name: str, dataset_path: str, records: int) -> None:
    """Announce a finished dataset; automations (e.g. the train-alpaca trigger in prefect.yaml) react to it."""
    if not in_prefect_run():
        return
    from prefect.events import emit_event

    emit_event(
        event=DATASET_READY_EVENT,
        resource={"prefect.resource.id": f"selfinstruct.dataset.{artifact_key(run_name)}", "prefect.resource.name": run_name},
        payload={"dataset": dataset_path, "records": records},
    )
