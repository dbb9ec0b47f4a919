"""A run's curation chain, built from its config: which steps run, in which order, over which state.

The order is ``GenerationConfig.curation`` (default: the cheap heuristic filters first, then the format checks,
decontamination, ROUGE-L and last the judge, so that each step only sees what the cheaper ones kept). Steps that
remember what was kept (exact duplicates, the ROUGE-L index) start from the seeds, the context runs and the
records already accepted, so a resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pipeline.config import GenerationConfig
from pipeline.curation import CurationChain, Step
from pipeline.filters import build_filters


def build_chain(
    config: GenerationConfig,
    kept: Sequence[tuple[str, str]],
    accepted: Sequence[tuple[str, str]],
    earlier_stats: Mapping[str, Mapping[str, Any]] | None = None,
) -> CurationChain:
    """The chain for a run. ``kept``: (instruction, input) of seeds and context runs; ``accepted``: this run's."""
    stages: dict[str, list[Step]] = {}
    for stage in config.curation:
        if stage == "filters":
            stages[stage] = list(build_filters(config, [*kept, *accepted]))
        elif stage == "format_checks":
            stages[stage] = _format_checks(config)
        elif stage == "decontamination":
            stages[stage] = _decontamination(config)
        elif stage == "dedup":
            stages[stage] = _rouge(config, kept, accepted)
        elif stage == "judge" and config.judge.enabled:
            from pipeline.judge import JudgeStep

            stages[stage] = [JudgeStep(config.judge.threshold)]
    return CurationChain([step for stage in config.curation for step in stages.get(stage, [])], earlier_stats)


def _format_checks(config: GenerationConfig) -> list[Step]:
    if not config.format_checks.enabled:
        return []
    from pipeline.format_checks import build_format_checks

    return list(build_format_checks(config.format_checks))


def _decontamination(config: GenerationConfig) -> list[Step]:
    if not config.decontamination.eval_sets:
        return []
    from pipeline.decontaminate import build_decontamination

    return list(build_decontamination(config.decontamination))


def _rouge(config: GenerationConfig, kept: Sequence[tuple[str, str]], accepted: Sequence[tuple[str, str]]) -> list[Step]:
    if not config.dedup.enabled:
        return []
    from pipeline.dedup import RougeDedup, RougeStep

    dedup = RougeDedup(threshold=config.dedup.threshold, tokenizer=config.resolved_dedup_tokenizer, top_k=config.dedup.top_k_similar)
    dedup.add_seeds([instruction for instruction, _ in kept])
    dedup.add_seeds([instruction for instruction, _ in accepted])
    return [RougeStep(dedup)]
