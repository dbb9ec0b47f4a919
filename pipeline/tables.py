"""The run's figures as markdown tables, written once and shown in both the dataset card and the Prefect artifacts."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], empty: Sequence[Any] | None = None) -> str:
    """A GitHub-flavoured markdown table; ``empty`` is the one row shown when there are no rows."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    body = [list(row) for row in rows] or ([list(empty)] if empty is not None else [])
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]
    return "\n".join(lines)


def count_rows(run_meta: Mapping[str, Any], stats: Any) -> list[tuple[str, Any]]:
    """What a run produced and spent: records, requests, tokens and throughput, from ``run.json`` and the export stats."""
    counts = run_meta.get("counts", {})
    usage = run_meta.get("usage", {})
    timings = run_meta.get("timings", {})
    seconds = timings.get("generation_seconds") or 0
    return [
        ("accepted records", stats.records),
        ("records with an input", stats.with_input),
        ("requests", counts.get("requests", 0)),
        ("candidates parsed", counts.get("candidates", 0)),
        ("prompt tokens", usage.get("prompt_tokens", 0)),
        ("completion tokens", usage.get("completion_tokens", 0)),
        ("retries", usage.get("retries", 0)),
        ("generation seconds", seconds),
        ("completion tokens/s", round(usage.get("completion_tokens", 0) / seconds, 1) if seconds else 0.0),
        ("accepted records/s", timings.get("accepted_per_second", 0)),
        *judge_rows(run_meta),
    ]


def judge_rows(run_meta: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """What judging cost, when the run had a judge: requests, tokens, and tokens per accepted record."""
    judge = run_meta.get("judge")
    if not judge:
        return []
    return [
        ("judge requests", judge.get("requests", 0)),
        ("judge prompt tokens", judge.get("prompt_tokens", 0)),
        ("judge completion tokens", judge.get("completion_tokens", 0)),
        ("judge tokens per accepted record", judge.get("tokens_per_accepted")),
    ]


def steps_table(steps: Mapping[str, Mapping[str, Any]]) -> str:
    """Per curation step, in the order they ran: what each kept, dropped and spent."""
    return markdown_table(("step", "kept", "dropped", "seconds", "tokens"),
                          ((name, s.get("kept", 0), s.get("dropped", 0), s.get("seconds", 0), s.get("tokens", 0)) for name, s in steps.items()),
                          empty=("(none)", 0, 0, 0, 0))


def counts_table(run_meta: Mapping[str, Any], stats: Any) -> str:
    return markdown_table(("what", "count"), count_rows(run_meta, stats))


def reasons_table(rejected_by_reason: Mapping[str, int]) -> str:
    return markdown_table(("reason", "count"), rejected_by_reason.items(), empty=("(none)", 0))


def faults_table(faults: Mapping[str, int]) -> str:
    return markdown_table(("kind", "count"), faults.items(), empty=("(none)", 0))


def lengths_table(lengths: Mapping[str, Mapping[str, float]]) -> str:
    columns = ("mean", "median", "p90", "min", "max")
    return markdown_table(("field", *columns), ([name, *(s[c] for c in columns)] for name, s in lengths.items()))


def verbs_table(verbs: Sequence[Mapping[str, Any]]) -> str:
    """Root verbs, best first, with their most common direct objects."""
    return markdown_table(("verb", "count", "common objects"),
                          ((v["verb"], v["count"], ", ".join(v["objects"])) for v in verbs), empty=("(none)", 0, ""))
