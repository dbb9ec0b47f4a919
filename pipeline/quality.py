"""The quality report of a run: yield and cost, diversity, shape and quality, beside the papers' own figures.

Everything is computed from the run directory (``run.json``, ``accepted.jsonl``, ``rejected.jsonl``, and
``audit.json`` once a team has filled an audit sheet), written to ``quality.json``, drawn as charts, and rendered
as markdown for the dataset card, the Prefect artifacts and ``selfinstruct report``.

What each figure means, and where a reference figure comes from, is in :data:`FIGURES` and :data:`REFERENCES`.
Lengths are in words: whitespace-separated, which for Korean are eojeol (a word with its particles), as Korean
NLP usually counts. Classification-style tasks are recognised by :func:`is_classification_style`, a heuristic
(Self-Instruct asked GPT-3 instead); its agreement with the seed files' own labels is a test.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from pipeline import diversity, tables
from pipeline.audit import AUDIT_JSON, QUESTIONS, AuditSummary, load_audit_summary
from pipeline.files import read_jsonl, write_json_atomic
from pipeline.store import ACCEPTED, REJECTED, RUN_JSON

log = logging.getLogger(__name__)

QUALITY_JSON = "quality.json"

#: Rows scored against every other accepted record for the nearest-neighbour histogram (exact per row).
NEAREST_OTHER_SAMPLE = 1000
HISTOGRAM_BINS = 20  # ROUGE-L in [0, 1] by 0.05, as Self-Instruct's Fig. 4

SELF_INSTRUCT = "Self-Instruct (Wang et al. 2023, Tables 1-2, Fig. 3)"
ALPACA = "Alpaca (Taori et al. 2023, repository README)"


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    section: str
    kind: str = "count"  # count | share | ratio | seconds


#: Every figure of the report, in the order the tables show them.
FIGURES: tuple[Figure, ...] = (
    Figure("requests", "requests", "yield"),
    Figure("tasks_asked", "tasks asked for", "yield"),
    Figure("parsed", "tasks parsed", "yield"),
    Figure("accepted", "accepted records", "yield"),
    Figure("parse_yield", "parse yield (parsed / asked)", "yield", "share"),
    Figure("truncation_rate", "truncated requests", "yield", "share"),
    Figure("accepted_per_request", "accepted per request", "yield", "ratio"),
    Figure("prompt_tokens_per_accepted", "prompt tokens per accepted", "yield", "ratio"),
    Figure("completion_tokens_per_accepted", "completion tokens per accepted", "yield", "ratio"),
    Figure("judge_tokens_per_accepted", "judge tokens per accepted", "yield", "ratio"),
    Figure("wall_seconds", "generation seconds", "yield", "seconds"),
    Figure("accepted_per_second", "accepted per second", "yield", "ratio"),
    Figure("rouge_to_seed_mean", "ROUGE-L to nearest seed, mean", "diversity", "ratio"),
    Figure("rouge_to_seed_median", "ROUGE-L to nearest seed, median", "diversity", "ratio"),
    Figure("rouge_to_other_mean", "ROUGE-L to nearest other record, mean", "diversity", "ratio"),
    Figure("rouge_to_other_median", "ROUGE-L to nearest other record, median", "diversity", "ratio"),
    Figure("verb_parsed_share", "instructions with a root verb", "diversity", "share"),
    Figure("top_verb_coverage", "top 20 verbs x top 4 objects cover", "diversity", "share"),
    Figure("distinct_verbs", "distinct root verbs", "diversity"),
    Figure("distinct_1", "distinct-1 (instructions)", "diversity", "ratio"),
    Figure("distinct_2", "distinct-2 (instructions)", "diversity", "ratio"),
    Figure("compression_ratio", "gzip compression ratio (instructions)", "diversity", "ratio"),
    Figure("self_repetition", "self-repetition, 4-grams (instructions)", "diversity", "ratio"),
    Figure("with_input_share", "records with an input", "shape", "share"),
    Figure("classification_share", "classification-style tasks", "shape", "share"),
    Figure("instruction_words_mean", "instruction length, mean words", "shape", "ratio"),
    Figure("input_words_mean", "non-empty input length, mean words", "shape", "ratio"),
    Figure("output_words_mean", "output length, mean words", "shape", "ratio"),
    Figure("judge_mean", "judge score, mean (1-5)", "quality", "ratio"),
    Figure("audit_valid_instruction", "audit: valid instruction", "quality", "share"),
    Figure("audit_appropriate_input", "audit: appropriate input", "quality", "share"),
    Figure("audit_correct_output", "audit: correct output", "quality", "share"),
    Figure("audit_all_valid", "audit: all fields valid", "quality", "share"),
)

#: Published figures, by figure key: (source, value). Self-Instruct's are of its 52K GPT-3 set (Table 1: statistics;
#: Table 2: expert review of 200 instances; Fig. 3: verb-noun coverage); Alpaca's from its repository.
REFERENCES: dict[str, list[tuple[str, float]]] = {
    "accepted": [(SELF_INSTRUCT, 52_445), (ALPACA, 52_002)],
    "with_input_share": [(SELF_INSTRUCT, round(1 - 35_878 / 82_439, 3)), (ALPACA, 0.40)],
    "classification_share": [(SELF_INSTRUCT, round(11_584 / 52_445, 3))],
    "top_verb_coverage": [(SELF_INSTRUCT, 0.14)],
    "instruction_words_mean": [(SELF_INSTRUCT, 15.9)],
    "input_words_mean": [(SELF_INSTRUCT, 12.7)],
    "output_words_mean": [(SELF_INSTRUCT, 18.9)],
    **{f"audit_{q.column}": [(SELF_INSTRUCT, q.self_instruct)] for q in QUESTIONS},
}
#: Said in the reference table's notes: Self-Instruct's 52,445 instructions came with 82,439 instances (inputs/outputs).
REFERENCE_NOTES = (
    "Self-Instruct: 52,445 instructions with 82,439 instances; shares of inputs are per instance there, per record here.",
    "Alpaca: 52,002 records, 'around 40% of the examples have an input'.",
)

_CLASSIFICATION_CUES = re.compile(
    r"\b(classify|classification|categori[sz]e|categor(?:y|ies)|label|sentiment|true or false|yes or no|is it|"
    r"whether|which (?:one|of)|identify (?:if|whether|the (?:type|category|tone|language|pos))|detect|decide if|"
    r"determine (?:if|whether)|tell (?:me )?if|positive or negative|spam|fact or opinion|choose|select|"
    r"multiple[- ]choice|pos tag|does)\b"
    r"|분류|판단|여부|맞는지|아닌지|긍정|부정|어느 쪽|참인지|거짓인지|고르|골라|구분|중에서|중 하나|품사|속하|해당하",
    re.IGNORECASE,
)
_MAX_LABEL_WORDS = 6


def is_classification_style(instruction: str, output: str) -> bool:
    """A task whose answer is a label from a small set: a classification cue in the instruction and a short output.

    Self-Instruct told classification from other tasks by asking GPT-3; a cue word ("classify", "whether",
    "sentiment", 분류, 여부, ...) and an output of at most six words is the cheap stand-in.
    """
    return len(output.split()) <= _MAX_LABEL_WORDS and bool(_CLASSIFICATION_CUES.search(instruction))


def _words(text: str) -> int:
    return len(text.split())


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "min": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 4), "median": round(statistics.median(ordered), 4),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
        "min": round(ordered[0], 4), "max": round(ordered[-1], 4), "n": len(ordered),
    }


def _histogram(values: Iterable[float], bins: int = HISTOGRAM_BINS) -> list[int]:
    counts, _ = np.histogram(np.fromiter(values, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    return counts.tolist()


def _ratio(numerator: float, denominator: float, digits: int = 4) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


def _seed_instructions(config: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """The run's seed instructions, and why there are none when they cannot be read (then ROUGE-to-seed is skipped)."""
    from pipeline.config import GenerationConfig
    from pipeline.seeds import SeedError, load_seeds

    try:
        path = GenerationConfig.model_validate(dict(config)).resolved_seeds_path
        return [task.instruction for task in load_seeds(path)], None
    except (SeedError, OSError, ValueError) as exc:
        return [], f"seed tasks not readable: {str(exc).splitlines()[0]}"


def funnel(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """requests -> tasks asked for -> parsed -> kept by each curation step, in order -> accepted."""
    counts = meta.get("counts", {})
    config = meta.get("config", {})
    requests = counts.get("requests", 0)
    stages = [
        {"stage": "requests", "count": requests},
        {"stage": "tasks asked for", "count": requests * config.get("tasks_per_request", 0)},
        {"stage": "tasks parsed", "count": counts.get("candidates", 0)},
    ]
    stages += [{"stage": f"kept by {name}", "count": step.get("kept", 0)} for name, step in counts.get("steps", {}).items()]
    stages.append({"stage": "accepted", "count": counts.get("accepted", 0)})
    return stages


def build_report(run_dir: str | Path, verb_parser: Callable[[Sequence[str], str], list] | None = None) -> dict[str, Any]:
    """Compute every figure of the run in ``run_dir``; returns the dict that :func:`write_report` stores."""
    from pipeline.verbs import summarize_verb_objects, verb_objects

    run_dir = Path(run_dir)
    started = time.perf_counter()
    meta = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
    config = meta.get("config", {})
    language = config.get("language", "en")
    tokenizer = config.get("dedup", {}).get("tokenizer", "auto")
    accepted = list(read_jsonl(run_dir / ACCEPTED))
    rejected = list(read_jsonl(run_dir / REJECTED))
    instructions = [r["instruction"] for r in accepted]
    outputs = [r["output"] for r in accepted]
    inputs = [r.get("input", "") for r in accepted]
    counts, usage, timings = meta.get("counts", {}), meta.get("usage", {}), meta.get("timings", {})
    requests = counts.get("requests", 0)
    n = len(accepted)
    figures: dict[str, Any] = {}
    notes: list[str] = []

    # -- yield and cost
    truncated_requests = {r.get("request_index") for r in rejected if r.get("reason") == "truncated" or r.get("finish_reason") == "length"}
    asked = requests * config.get("tasks_per_request", 0)
    judge = meta.get("judge") or {}
    judge_tokens = judge.get("prompt_tokens", 0) + judge.get("completion_tokens", 0)
    figures.update(
        requests=requests, tasks_asked=asked, parsed=counts.get("candidates", 0), accepted=n,
        parse_yield=_ratio(counts.get("candidates", 0), asked), truncation_rate=_ratio(len(truncated_requests), requests),
        accepted_per_request=_ratio(n, requests, 2),
        prompt_tokens_per_accepted=_ratio(usage.get("prompt_tokens", 0), n, 1),
        completion_tokens_per_accepted=_ratio(usage.get("completion_tokens", 0), n, 1),
        judge_tokens_per_accepted=_ratio(judge_tokens, n, 1) if judge else None,
        wall_seconds=timings.get("generation_seconds"), accepted_per_second=timings.get("accepted_per_second"),
    )

    # -- diversity
    seeds, why_no_seeds = _seed_instructions(config)
    if why_no_seeds:
        notes.append(why_no_seeds)
    to_seed = diversity.nearest_rouge_l(instructions, seeds, tokenizer).scores if seeds else np.zeros(0)
    to_other, other_rows = diversity.nearest_other(instructions, tokenizer, NEAREST_OTHER_SAMPLE, seed=config.get("seed", 0))
    seed_summary, other_summary = _summary(to_seed.tolist()), _summary(to_other.tolist())
    pairs = (verb_parser or verb_objects)(instructions, language)
    verbs = summarize_verb_objects(pairs)
    figures.update(
        rouge_to_seed_mean=seed_summary["mean"] if seeds else None, rouge_to_seed_median=seed_summary["median"] if seeds else None,
        rouge_to_other_mean=other_summary["mean"] if n > 1 else None, rouge_to_other_median=other_summary["median"] if n > 1 else None,
        verb_parsed_share=round(verbs.parsed_share, 4) if n else None, top_verb_coverage=round(verbs.coverage, 4) if n else None,
        distinct_verbs=len({verb for verb, _ in pairs if verb}),
        distinct_1=round(diversity.distinct_n(instructions, 1), 4), distinct_2=round(diversity.distinct_n(instructions, 2), 4),
        compression_ratio=round(diversity.compression_ratio(instructions), 4),
        self_repetition=round(diversity.self_repetition(instructions), 4),
    )
    if n > other_rows:
        notes.append(f"ROUGE-L to the nearest other record: {other_rows} random records, each against all {n}.")

    # -- shape
    lengths = {
        "instruction": _summary([_words(t) for t in instructions]),
        "input": _summary([_words(t) for t in inputs if t.strip()]),
        "output": _summary([_words(t) for t in outputs]),
    }
    figures.update(
        with_input_share=_ratio(sum(1 for t in inputs if t.strip()), n),
        classification_share=_ratio(sum(is_classification_style(i, o) for i, o in zip(instructions, outputs)), n),
        instruction_words_mean=round(lengths["instruction"]["mean"], 1), input_words_mean=round(lengths["input"]["mean"], 1),
        output_words_mean=round(lengths["output"]["mean"], 1),
    )

    # -- quality
    scores = [r["judge_score"] for r in accepted if isinstance(r.get("judge_score"), int)]
    judged_dropped = [r["judge_score"] for r in rejected if isinstance(r.get("judge_score"), int)]
    figures["judge_mean"] = round(statistics.fmean(scores), 2) if scores else None
    audit = _read_audit(run_dir)
    for q in QUESTIONS:
        figures[f"audit_{q.column}"] = audit.questions[q.column].share if audit else None

    return {
        "run_name": meta.get("run_name", run_dir.name),
        "run_dir": str(run_dir),
        "language": language,
        "model": config.get("llm", {}).get("model"),
        "figures": figures,
        "funnel": funnel(meta),
        "distributions": {
            "rouge_to_seed": {"histogram": _histogram(to_seed), **seed_summary},
            "rouge_to_other": {"histogram": _histogram(to_other), **other_summary},
            "lengths_words": lengths,
            "lengths_unit": "eojeol (whitespace words)" if language == "ko" else "words (whitespace)",
            "judge_scores": {str(s): c for s, c in sorted(Counter(scores).items())},
            "judge_scores_rejected": {str(s): c for s, c in sorted(Counter(judged_dropped).items())},
        },
        "verbs": {"top": verbs.verbs, "coverage": verbs.coverage, "parsed_share": verbs.parsed_share, "total": verbs.total},
        "audit": audit.to_json() if audit else None,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _read_audit(run_dir: Path) -> AuditSummary | None:
    try:
        return load_audit_summary(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: not readable (%s); the report leaves the audit out", run_dir / AUDIT_JSON, exc)
        return None


def write_report(run_dir: str | Path, report: Mapping[str, Any]) -> Path:
    path = Path(run_dir) / QUALITY_JSON
    write_json_atomic(path, dict(report))
    return path


def load_report(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``quality.json``, computed (and written) first when it is missing or older than the run's data."""
    run_dir = Path(run_dir)
    path = run_dir / QUALITY_JSON
    sources = [run_dir / name for name in (RUN_JSON, ACCEPTED, REJECTED, AUDIT_JSON) if (run_dir / name).exists()]
    if path.exists() and all(path.stat().st_mtime >= source.stat().st_mtime for source in sources):
        return json.loads(path.read_text(encoding="utf-8"))
    report = build_report(run_dir)
    write_report(run_dir, report)
    return report


# ---- presentation ---------------------------------------------------------------------------------------------------

def format_value(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "share":
        return f"{100 * value:.1f}%"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "seconds":
        return f"{value:,.1f}"
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"


def figure_rows(reports: Sequence[Mapping[str, Any]], sections: Iterable[str] | None = None,
                references: bool = True) -> tuple[list[str], list[list[str]]]:
    """(header, rows): each figure, its value in each report, and the published figures beside them."""
    wanted = set(sections) if sections is not None else None
    sources = [SELF_INSTRUCT, ALPACA] if references else []
    header = ["figure", *(r["run_name"] for r in reports), *(s.split(" (")[0] for s in sources)]
    rows = []
    for figure in FIGURES:
        if wanted is not None and figure.section not in wanted:
            continue
        values = [r["figures"].get(figure.key) for r in reports]
        published = dict(REFERENCES.get(figure.key, []))
        if all(v is None for v in values) and not published:
            continue
        rows.append([figure.label, *(format_value(v, figure.kind) for v in values),
                     *(format_value(published.get(s), figure.kind) for s in sources)])
    return header, rows


SECTIONS = (("Yield and cost", "yield"), ("Diversity", "diversity"), ("Shape", "shape"), ("Quality", "quality"))


def funnel_rows(reports: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The funnel stages of all reports (in first-seen order), with each report's count ("–" where it had no such stage)."""
    stages: list[str] = []
    for report in reports:
        stages += [s["stage"] for s in report["funnel"] if s["stage"] not in stages]
    # "accepted" ends every funnel, whichever run listed its steps first.
    stages.sort(key=lambda stage: stage == "accepted")
    counts = [{s["stage"]: s["count"] for s in report["funnel"]} for report in reports]
    return [[stage, *(f"{c[stage]:,}" if stage in c else "–" for c in counts)] for stage in stages]


def comparison_markdown(reports: Sequence[Mapping[str, Any]]) -> str:
    """Several runs side by side, section by section, with the published figures in the last columns."""
    names = ", ".join(f"`{r['run_name']}`" for r in reports)
    lines = [f"# Quality report: {names}", ""]
    for title, section in SECTIONS:
        header, rows = figure_rows(reports, [section])
        lines += [f"## {title}", "", tables.markdown_table(header, rows), ""]
    lines += ["## Funnel", "", tables.markdown_table(["stage", *(r["run_name"] for r in reports)], funnel_rows(reports)), ""]
    lines += ["Reference figures: " + " ".join(REFERENCE_NOTES), ""]
    return "\n".join(lines)


def markdown(report: Mapping[str, Any], charts: Mapping[str, str] | None = None) -> str:
    """The report as markdown; ``charts`` maps a chart name to the image source (a relative path or a data URI)."""
    charts = dict(charts or {})

    def chart(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({charts[name]})", ""] if name in charts else []

    def section(title: str, name: str) -> list[str]:
        header, rows = figure_rows([report], [name])
        return [f"### {title}", "", tables.markdown_table(header, rows), ""]

    lines = [
        "### Funnel", "",
        tables.markdown_table(("stage", "count"), ((s["stage"], f"{s['count']:,}") for s in report["funnel"])), "",
        *chart("funnel", "funnel"),
        *section("Yield and cost", "yield"),
        *section("Diversity", "diversity"),
        *chart("rouge_to_seed", "ROUGE-L to the nearest seed"),
        *chart("rouge_to_other", "ROUGE-L to the nearest other record"),
        *chart("verbs", "root verbs and their objects"),
        "#### Top root verbs and their direct objects", "",
        tables.verbs_table(report["verbs"]["top"]), "",
        *section("Shape", "shape"),
        *chart("lengths", "lengths"),
        *section("Quality", "quality"),
        *chart("judge_scores", "judge scores"),
        "Reference figures: " + " ".join(REFERENCE_NOTES),
        "",
    ]
    if report.get("notes"):
        lines += ["Notes: " + " ".join(report["notes"]), ""]
    return "\n".join(lines)
