"""Benchmark: the quality report (pipeline.quality + pipeline.charts) of a 52K-record run. Target: under 60 s.

Builds a run directory of 52,000 accepted records from ``../shared/bench/instructions_55k.json`` (55,588 real
English instruction-like sentences): each record's instruction is a sentence, its input (for 40% of records,
Alpaca's share) and output are other sentences of the corpus, chosen by a seeded RNG; ``rejected.jsonl`` holds
26,000 records, as a run that drops one candidate in three. The run's seeds are the project's English seed tasks.

Figures, with a baseline measured in the same run: the report's wall seconds (everything ``selfinstruct report``
computes, charts included; the audit sheet excluded, as the issue asks) against the seconds it takes only to read
and JSON-decode the run's files (the floor of any report of the run), and each part of the report on its own:
ROUGE-L to the seeds and to the nearest other record, the verb-object parse, the n-gram figures and the charts.

Usage: ``.venv/bin/python benchmarks/report_52k.py [--bench-dir DIR] [--records 52000]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH_DIR = REPO_ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(REPO_ROOT))


def make_run(run_dir: Path, sentences: list[str], records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    run_dir.mkdir(parents=True)
    with (run_dir / "accepted.jsonl").open("w", encoding="utf-8") as f:
        for i in range(records):
            record = {"request_index": i // 2, "candidate_index": i % 2, "instruction": sentences[i % len(sentences)],
                      "input": rng.choice(sentences) if rng.random() < 0.4 else "", "output": rng.choice(sentences),
                      "rouge_max": round(rng.random() * 0.7, 4), "seed_ids": ["seed_task_1"]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with (run_dir / "rejected.jsonl").open("w", encoding="utf-8") as f:
        for i in range(records // 2):
            f.write(json.dumps({"request_index": i, "candidate_index": 2, "instruction": rng.choice(sentences),
                                "input": "", "output": "x", "reason": "rouge_similar", "step": "dedup", "score": 0.8}) + "\n")
    requests = records // 2 + records // 4
    meta = {
        "run_name": "bench52k", "status": "completed",
        "config": {"language": "en", "tasks_per_request": 4, "seed": 42, "dedup": {"tokenizer": "auto"}, "llm": {"model": "bench"}},
        "counts": {"requests": requests, "candidates": records + records // 2, "accepted": records,
                   "steps": {"filters": {"kept": records + records // 4}, "dedup": {"kept": records}}},
        "usage": {"prompt_tokens": requests * 700, "completion_tokens": requests * 400},
        "timings": {"generation_seconds": 3600.0, "accepted_per_second": round(records / 3600, 3)},
    }
    (run_dir / "run.json").write_text(json.dumps(meta), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR)
    parser.add_argument("--records", type=int, default=52_000)
    args = parser.parse_args()
    sentences = json.loads((args.bench_dir / "instructions_55k.json").read_text(encoding="utf-8"))

    from pipeline import diversity, quality, verbs
    from pipeline.charts import draw_charts
    from pipeline.files import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench52k"
        make_run(run_dir, sentences, args.records)
        verbs.get_english_nlp()  # loading spaCy (~1 s) is start-up, not report time

        started = time.perf_counter()
        accepted = list(read_jsonl(run_dir / "accepted.jsonl"))
        list(read_jsonl(run_dir / "rejected.jsonl"))
        json.loads((run_dir / "run.json").read_text())
        read_seconds = time.perf_counter() - started

        started = time.perf_counter()
        report = quality.build_report(run_dir)
        quality.write_report(run_dir, report)
        charts = draw_charts(run_dir, report, accepted)
        report_seconds = time.perf_counter() - started

        instructions = [r["instruction"] for r in accepted]
        parts = {}
        for name, work in (
            ("rouge_to_seeds", lambda: diversity.nearest_rouge_l(instructions, sentences[:175], "auto")),
            ("rouge_to_other", lambda: diversity.nearest_other(instructions, "auto", quality.NEAREST_OTHER_SAMPLE)),
            ("verb_object_parse", lambda: verbs.verb_objects(instructions, "en")),
            ("ngram_figures", lambda: (diversity.distinct_n(instructions, 1), diversity.distinct_n(instructions, 2),
                                       diversity.compression_ratio(instructions), diversity.self_repetition(instructions))),
            ("charts", lambda: draw_charts(run_dir, report, accepted)),
        ):
            started = time.perf_counter()
            work()
            parts[name] = round(time.perf_counter() - started, 2)
            print(f"  {name}: {parts[name]} s", flush=True)

    figures = {
        "records": args.records, "report_seconds": round(report_seconds, 2), "read_seconds": round(read_seconds, 2),
        "report_over_read": round(report_seconds / read_seconds, 1), "target_seconds": 60,
        "charts": sorted(charts), "parts_seconds": parts,
        "top_verb_coverage": report["figures"]["top_verb_coverage"], "verb_parsed_share": report["figures"]["verb_parsed_share"],
    }
    print(f"report of {args.records:,} records: {report_seconds:.1f} s (reading the run alone: {read_seconds:.2f} s, "
          f"{figures['report_over_read']}x); target 60 s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
