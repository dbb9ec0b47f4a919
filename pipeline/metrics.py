"""Read a vLLM server's Prometheus metrics, e.g. to report how much of the prompts the prefix cache served.

vLLM serves Prometheus text at the server root (``http://host:port/metrics``, not under ``/v1``). The V1
engine counts prefix-cache lookups in tokens: ``vllm:prefix_cache_queries_total`` (prompt tokens looked up)
and ``vllm:prefix_cache_hits_total`` (of those, tokens whose KV blocks were already cached). Counters are
cumulative since the server started, so a run's hit rate is the ratio of the two counters' increase between
a reading before and one after the run. With ``--data-parallel-size`` each engine has its own label set;
:func:`read_vllm_metrics` sums label sets, so the figures cover the whole server.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import httpx

#: (queries, hits) counter names, newest first. vLLM 0.7-0.10 called them ``vllm:gpu_prefix_cache_*``.
PREFIX_CACHE_COUNTERS = (
    ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"),
    ("vllm:gpu_prefix_cache_queries_total", "vllm:gpu_prefix_cache_hits_total"),
)


def metrics_url(base_url: str) -> str:
    """``http://host:port/v1`` (an OpenAI base URL) → ``http://host:port/metrics``."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root.rstrip("/") + "/metrics"


def parse_prometheus_text(text: str) -> dict[str, float]:
    """Prometheus text exposition → ``{metric name: value summed over its label sets}``.

    Histogram buckets and summary quantiles (samples with an ``le`` or ``quantile`` label) are skipped: a sum
    over bucket bounds means nothing; their ``_sum`` and ``_count`` samples are kept. ``_created`` samples
    (timestamps) are skipped too. Parsing is ``prometheus_client``'s; where it rejects the text, the lines are
    parsed one by one and those it rejects are ignored, rather than failing a run over a report.
    """
    values: dict[str, float] = {}
    for sample in _samples(text):
        if sample.name.endswith("_created") or "le" in sample.labels or "quantile" in sample.labels:
            continue
        values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def _samples(text: str) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    def parse(chunk: str) -> list[Any]:
        return [sample for family in text_string_to_metric_families(chunk) for sample in family.samples]

    try:
        return parse(text if text.endswith("\n") else text + "\n")
    except ValueError:
        pass
    samples: list[Any] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                samples += parse(line + "\n")
            except ValueError:
                continue
    return samples


def read_vllm_metrics(
    base_url: str, api_key: str | None = None, timeout_s: float = 10.0, client: httpx.Client | None = None
) -> dict[str, float]:
    """Fetch and parse ``/metrics`` of the server behind ``base_url`` (which may end in ``/v1``).

    Pass a ``client`` to poll often: a new ``httpx`` client loads the CA bundle each time (~0.1 s of CPU).
    Raises ``httpx.HTTPError`` when the server cannot be reached or answers with an error status.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "EMPTY" else {}
    get = client.get if client is not None else httpx.get
    response = get(metrics_url(base_url), headers=headers, timeout=timeout_s)
    response.raise_for_status()
    return parse_prometheus_text(response.text)


def prefix_cache_hit_rate(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """Share of prompt tokens served from the prefix cache between two readings of :func:`read_vllm_metrics`.

    ``None`` when the server does not export the counters (prefix caching off, or not vLLM), when no prompt
    token was looked up in between, or when the counters went backwards (the server restarted in between).
    """
    for queries_name, hits_name in PREFIX_CACHE_COUNTERS:
        if queries_name in after and hits_name in after:
            queries = after[queries_name] - before.get(queries_name, 0.0)
            hits = after[hits_name] - before.get(hits_name, 0.0)
            if queries <= 0 or hits < 0 or hits > queries or math.isnan(queries) or math.isnan(hits):
                return None
            return hits / queries
    return None
