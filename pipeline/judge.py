"""An LLM judge in the style of AlpaGasus: each candidate rated 1-5 with a short rationale.

AlpaGasus kept the 9k of Alpaca's 52k records that ChatGPT rated at least 4.5 of 5, and that subset trained a
better model than the whole set. Here the rating is asked for through a JSON schema (``{"rationale", "score"}``,
score an integer 1-5), so vLLM enforces the shape; the prompt (``prompts/judge_{en,ko}.jinja``) puts the fixed
rubric first so that every judge request shares its prefix in vLLM's cache.

Judging must not hold up the ordered consumer (:mod:`pipeline.generate`). So the engine judges *speculatively*:
as soon as a completion arrives, in any order, its candidates are judged (:meth:`Judge.judge_request`)
concurrently with the generation requests still in flight, skipping those that an order-independent step before
the judge will drop anyway. When the consumer reaches that request, the judgments are ready and
:class:`JudgeStep` only looks them up. Each judge request carries a seed derived from the run seed, the request
and the candidate's position, so a retried or resumed run gets the same judgment from a deterministic server.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import jinja2

from pipeline.config import GenerationConfig, LLMConfig
from pipeline.curation import Step
from pipeline.llm import LLMClient, RequestRejectedError
from pipeline.prompts import TemplateError, derive_seed, resolve_template
from pipeline.records import Candidate, Drop, Record

#: Rationale characters kept on a record: "a short rationale", not a model's ramble.
MAX_RATIONALE_CHARS = 600

JUDGMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rationale": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["rationale", "score"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "judgment", "schema": JUDGMENT_SCHEMA, "strict": True}}


@dataclass(frozen=True)
class Judgment:
    """A rating, or why there is none (``score`` is None and ``error`` says what went wrong)."""

    score: int | None
    rationale: str
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def parse_judgment(text: str) -> tuple[int | None, str, str | None]:
    """(score, rationale, error) from a judge's answer: the schema's JSON, or a lone 1-5 digit as a fallback."""
    try:
        data = json.loads(text)
        score = data["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 5 or score != int(score):
            return None, str(data.get("rationale", ""))[:MAX_RATIONALE_CHARS], f"score {score!r} is not an integer from 1 to 5"
        return int(score), str(data.get("rationale", "")).strip()[:MAX_RATIONALE_CHARS], None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        # An endpoint without structured outputs may still answer "Score: 4 ..." as AlpaGasus' prompt asked.
        match = re.search(r"\b([1-5])\b", text)
        if match and len(re.findall(r"\b[1-5]\b", text)) == 1:
            return int(match.group(1)), text.strip()[:MAX_RATIONALE_CHARS], None
        return None, text.strip()[:MAX_RATIONALE_CHARS], "the judgment is not the JSON asked for"


def judge_llm_config(config: GenerationConfig) -> LLMConfig:
    """The judge's endpoint settings: its own section if given, else the generation's, with the judge's sampling."""
    base = config.judge.llm or config.llm
    return base.model_copy(update={
        "temperature": config.judge.temperature,
        "max_tokens": config.judge.max_tokens,
        "max_concurrency": config.judge.max_concurrency or config.llm.max_concurrency,
        "json_string_pattern": None,
    })


def judge_base_urls(config: GenerationConfig, generation_urls: list[str]) -> list[str]:
    """The judge's own endpoints if it has any, else the generation's (managed or not)."""
    if config.judge.llm is not None and config.judge.llm.base_urls:
        return list(config.judge.llm.base_urls)
    return list(generation_urls)


class Judge:
    """Renders judge prompts and sends them, at most ``max_concurrency`` at once, through its own client."""

    def __init__(self, config: GenerationConfig):
        self.run_seed = config.seed
        self.template_path = resolve_template(config.judge.prompt_template, config.language, "judge", "judge.prompt_template")
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
        try:
            self._template = env.from_string(self.template_path.read_text(encoding="utf-8"))
            self.render(Candidate("instruction", "", "output"))
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.template_path}: judge template cannot be rendered: {exc}") from exc
        self.llm_config = judge_llm_config(config)
        self._slots: asyncio.Semaphore | None = None

    def render(self, candidate: Candidate) -> str:
        return self._template.render(instruction=candidate.instruction, input=candidate.input, output=candidate.output).strip() + "\n"

    def seed(self, request_index: int, candidate_index: int) -> int:
        return derive_seed(self.run_seed, request_index, f"judge:{candidate_index}")

    async def judge_request(self, client: LLMClient, request_index: int, candidates: Sequence[tuple[int, Candidate]]) -> dict[int, Judgment]:
        """Judgments of one request's candidates, by position. A failed request raises LLMUnavailableError."""
        if self._slots is None:  # created on the loop that uses it (each round runs its own event loop)
            self._slots = asyncio.Semaphore(self.llm_config.max_concurrency)
        slots = self._slots

        async def one(position: int, candidate: Candidate) -> tuple[int, Judgment]:
            async with slots:
                try:
                    completion = await client.complete(request_index, self.render(candidate), self.seed(request_index, position),
                                                       RESPONSE_FORMAT)
                except RequestRejectedError as exc:
                    return position, Judgment(None, "", f"the judge request was refused: {exc}")
            score, rationale, error = parse_judgment(completion.text)
            return position, Judgment(score, rationale, error, completion.prompt_tokens, completion.completion_tokens)

        results = await asyncio.gather(*(one(position, candidate) for position, candidate in candidates))
        return dict(results)

    def reset_slots(self) -> None:
        self._slots = None


class JudgeStep(Step):
    """Looks up the judgment made for a record while it was in flight; drops it below the threshold.

    Writes ``judge_score`` and ``judge_rationale`` on kept records. A record below ``threshold`` is rejected as
    ``low_score`` with the score and the rationale. A record the judge could not rate is kept unscored when there is
    no threshold, and rejected as ``judge_failed`` when there is one: an unrated record must not pass a quality bar.
    """

    name = "judge"
    reads = ("instruction", "input", "output")
    writes = ("judge_score", "judge_rationale")

    def __init__(self, threshold: float | None):
        self.threshold = threshold
        self._judgments: dict[tuple[int, int], Judgment] = {}
        self._tokens = 0

    def provide(self, request_index: int, judgments: dict[int, Judgment]) -> None:
        """The judgments of a request, handed over just before the consumer takes its candidates."""
        for position, judgment in judgments.items():
            self._judgments[(request_index, position)] = judgment
            self._tokens += judgment.prompt_tokens + judgment.completion_tokens

    def check(self, record: Record) -> Drop | None:
        judgment = self._judgments.pop((record.request_index, record.candidate_index), None)
        if judgment is None:
            raise RuntimeError(
                f"no judgment for request {record.request_index} candidate {record.candidate_index}: "
                "a step before the judge that the engine took for order-independent kept it"
            )
        if judgment.score is None:
            if self.threshold is not None:
                return Drop("judge_failed", judgment.error or "", {"judge_rationale": judgment.rationale})
            record.annotations["judge_score"] = None
            record.annotations["judge_rationale"] = judgment.error or ""
            return None
        if self.threshold is not None and judgment.score < self.threshold:
            return Drop("low_score", f"judge score {judgment.score} < {self.threshold:g}",
                        {"judge_score": judgment.score, "judge_rationale": judgment.rationale})
        record.annotations["judge_score"] = judgment.score
        record.annotations["judge_rationale"] = judgment.rationale
        return None

    def forget_request(self, request_index: int) -> None:
        """Drop judgments of a request's candidates that no record reached (the target was met mid-request)."""
        for key in [k for k in self._judgments if k[0] == request_index]:
            del self._judgments[key]

    def tokens_spent(self) -> int:
        return self._tokens
