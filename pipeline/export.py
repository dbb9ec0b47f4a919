"""Export a run directory to an Alpaca dataset, a Hugging Face dataset, a dataset card and charts.

Everything here is rebuilt from ``accepted.jsonl``, ``rejected.jsonl`` and ``run.json``: export can be rerun
at any time, and a crash during export loses nothing (files are written to a temporary name and renamed).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline import quality, tables
from pipeline.audit import AUDIT_SHEET, write_audit_sheet
from pipeline.charts import CHARTS_DIR, draw_charts
from pipeline.files import read_jsonl, write_json_atomic
from pipeline.rouge import ALPACA_THRESHOLD
from pipeline.store import ACCEPTED, REJECTED, RUN_JSON

log = logging.getLogger(__name__)

ALPACA_JSON = "alpaca_data.json"
PARQUET = "alpaca_data.parquet"
HF_DIR = "dataset"
CARD = "README.md"

@dataclass
class DatasetStats:
    records: int
    rejected_by_reason: dict[str, int]
    lengths: dict[str, dict[str, float]]
    with_input: int
    samples: list[dict[str, str]] = field(default_factory=list)
    rejected_samples: list[dict[str, str]] = field(default_factory=list)


@dataclass
class ExportResult:
    run_dir: Path
    alpaca_json: Path
    hf_dataset: Path | None
    parquet: Path | None
    card: Path
    charts: list[Path]
    stats: DatasetStats
    #: The quality report (:mod:`pipeline.quality`), also in ``quality.json``.
    report: dict[str, Any] = field(default_factory=dict)


def alpaca_records(run_dir: Path) -> list[dict[str, str]]:
    return [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in read_jsonl(run_dir / ACCEPTED)]


#: Fields of a rejected.jsonl line that are the record itself; the rest is the rejecting step's evidence.
_RECORD_FIELDS = ("request_index", "candidate_index", "instruction", "input", "output", "reason", "detail", "step", "raw", "finish_reason")


def rejected_sample(record: Mapping[str, Any]) -> dict[str, str]:
    """A rejected record as one row of a table: the reason, the step, its detail and evidence, the instruction."""
    evidence = {k: v for k, v in record.items() if k not in _RECORD_FIELDS}
    return {
        "reason": record["reason"],
        "step": str(record.get("step", "")),
        "detail": str(record.get("detail", "")),
        "evidence": json.dumps(evidence, ensure_ascii=False)[:300] if evidence else "",
        "instruction": record.get("instruction", record.get("raw", ""))[:300],
    }


def dataset_records(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of the HF dataset and parquet file: Alpaca's three fields, and the judge's score when it rated them."""
    accepted = list(read_jsonl(run_dir / ACCEPTED))
    scored = any("judge_score" in r for r in accepted)
    return [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"],
             **({"judge_score": r.get("judge_score")} if scored else {})} for r in accepted]


def _length_summary(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0, "median": 0, "p90": 0, "min": 0, "max": 0}
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 1),
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "min": ordered[0],
        "max": ordered[-1],
    }


def compute_stats(run_dir: Path, sample_rows: int = 20, seed: int = 0) -> DatasetStats:
    records = alpaca_records(run_dir)
    rejected = list(read_jsonl(run_dir / REJECTED))
    rng = random.Random(seed)
    words = lambda text: len(text.split())  # noqa: E731 - a one-line helper read in one place
    return DatasetStats(
        records=len(records),
        rejected_by_reason=dict(Counter(r["reason"] for r in rejected).most_common()),
        lengths={
            "instruction_words": _length_summary([words(r["instruction"]) for r in records]),
            "input_words": _length_summary([words(r["input"]) for r in records if r["input"]]),
            "output_words": _length_summary([words(r["output"]) for r in records]),
        },
        with_input=sum(1 for r in records if r["input"]),
        samples=rng.sample(records, min(sample_rows, len(records))),
        rejected_samples=[rejected_sample(r) for r in rng.sample(rejected, min(sample_rows, len(rejected)))],
    )


def _write_hf_dataset(run_dir: Path, records: list[dict[str, Any]]) -> tuple[Path, Path]:
    from datasets import Dataset, Features, Value

    columns = {"instruction": Value("string"), "input": Value("string"), "output": Value("string")}
    if records and "judge_score" in records[0]:
        columns["judge_score"] = Value("int8")  # None where the judge could not rate a record
    features = Features(columns)
    columns = {name: [r[name] for r in records] for name in features}
    dataset = Dataset.from_dict(columns, features=features)
    target = run_dir / HF_DIR
    tmp = run_dir / f".{HF_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    parquet = run_dir / PARQUET
    tmp_parquet = run_dir / f".{PARQUET}.tmp"
    dataset.to_parquet(str(tmp_parquet))
    os.replace(tmp_parquet, parquet)
    return target, parquet


def render_card(run_meta: dict[str, Any], stats: DatasetStats, report: Mapping[str, Any], charts: Mapping[str, Path]) -> str:
    from huggingface_hub import DatasetCardData

    config = run_meta.get("config", {})
    run_name = run_meta.get("run_name", "")
    card_data = DatasetCardData(
        language=[config.get("language", "en")], task_categories=["text-generation"],
        tags=["self-instruct", "alpaca", "synthetic"], pretty_name=f"selfinstruct run {run_name}",
    )
    lines = [
        "---", card_data.to_yaml(), "---", "",
        f"# Self-instruct dataset `{run_name}`",
        "",
        f"{stats.records} instruction records in Alpaca format (`instruction`, `input`, `output`), generated with "
        f"`{config.get('llm', {}).get('model', '?')}` from the seed tasks in `{config.get('seeds_path') or 'seeds/'}` "
        "by the selfinstruct pipeline: prompts with sampled seed examples, quality filters and ROUGE-L "
        f"deduplication (threshold {config.get('dedup', {}).get('threshold', ALPACA_THRESHOLD)}).",
        "",
        "## Counts", "", tables.counts_table(run_meta, stats), "",
        "## Rejected, by reason", "", tables.reasons_table(stats.rejected_by_reason), "",
        "## Curation steps", "", tables.steps_table(run_meta.get("counts", {}).get("steps", {})), "",
        "## Quality report", "",
        quality.markdown(report, {name: f"{CHARTS_DIR}/{path.name}" for name, path in charts.items()}),
        "## Lengths (words)", "", tables.lengths_table(stats.lengths), "",
    ]
    lines += ["## Generating config", "", "```json", json.dumps(config, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(lines)


def export_run(run_dir: str | Path, hf_dataset: bool = True, charts: bool = True, sample_rows: int = 20) -> ExportResult:
    """Write alpaca_data.json, the HF dataset + parquet, charts and the dataset card for a run directory."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
    records = alpaca_records(run_dir)
    write_json_atomic(run_dir / ALPACA_JSON, records)
    hf_path = parquet = None
    if hf_dataset:
        hf_path, parquet = _write_hf_dataset(run_dir, dataset_records(run_dir))
    stats = compute_stats(run_dir, sample_rows, seed=meta.get("config", {}).get("seed", 0))
    report = quality.build_report(run_dir)
    quality.write_report(run_dir, report)
    if records and not (run_dir / AUDIT_SHEET).exists():
        # Written once: a team may be filling it in, and a rerun of the export must not replace their answers.
        write_audit_sheet(run_dir)
    chart_paths = draw_charts(run_dir, report, records) if charts and records else {}
    card = run_dir / CARD
    tmp = run_dir / f".{CARD}.tmp"
    tmp.write_text(render_card(meta, stats, report, chart_paths), encoding="utf-8")
    os.replace(tmp, card)
    if hf_path is not None:
        shutil.copyfile(card, hf_path / CARD)
    return ExportResult(run_dir, run_dir / ALPACA_JSON, hf_path, parquet, card, list(chart_paths.values()), stats, report)
