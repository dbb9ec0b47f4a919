"""The generation engine: a streaming producer-consumer loop from prompts to accepted records.

- Producer: keeps up to ``llm.max_concurrency`` requests in flight, refilling as each completes, never more
  than ``max_ahead`` request indices past the oldest unconsumed one (that caps the reorder buffer).
- Consumer: takes completions strictly in request order (a reorder buffer holds early arrivals), parses,
  filters, deduplicates and appends them to the run store. Order by index, not arrival, is what makes a
  resumed or replayed run identical to an uninterrupted one.
- Once the target is in sight the producer only sends what the observed yield says is still needed, and once
  it is reached the consumer stops: the overshoot is under one request's worth of records.

:class:`GenerationRun` holds one run's state between rounds, so the Prefect flow can run one task per round
while the CLI runs a single one; :mod:`pipeline.lifecycle` opens, drives, marks and closes it for both.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.config import GenerationConfig
from pipeline.chain import build_chain
from pipeline.curation import CurationChain
from pipeline.llm import Completion, LLMClient, LLMUnavailableError, RequestRejectedError
from pipeline.judge import Judge, Judgment, JudgeStep
from pipeline.parse import ParseResult, parse_completion
from pipeline.records import Record, request_rejection
from pipeline.prompts import PromptBuilder, RenderedPrompt, resolve_template, response_schema
from pipeline.seeds import SeedTask, load_seeds
from pipeline.files import read_jsonl
from pipeline.store import RunDirectoryError, RunStore

log = logging.getLogger(__name__)

#: Raw completion text kept in rejected.jsonl for a parse failure: enough to debug a prompt, not a megabyte.
RAW_SNIPPET_CHARS = 2000

#: A server that refuses this many requests in a row (HTTP 400: e.g. max_tokens above the model's context)
#: is misconfigured for every request; failing beats recording thousands of identical rejections.
MAX_CONSECUTIVE_REQUEST_ERRORS = 8

ProgressCallback = Callable[["RunCounts"], None]

#: Config fields that shape what a request index produces; a resumed run must not change them.
_DETERMINISM_FIELDS = (
    "language", "response_mode", "num_seed_examples", "tasks_per_request", "seed",
    "llm.model", "llm.temperature", "llm.top_p", "llm.max_tokens", "llm.json_string_pattern",
    "filters", "dedup.threshold", "dedup.tokenizer", "dedup.enabled", "dedup.context_runs",
    "curation", "format_checks", "decontamination",
    "judge.enabled", "judge.threshold", "judge.prompt_template", "judge.temperature", "judge.max_tokens",
)


@dataclass
class RunCounts:
    target: int
    accepted: int = 0
    requests: int = 0
    candidates: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def percent(self) -> float:
        return min(100.0, 100.0 * self.accepted / self.target)


@dataclass
class Outcome:
    prompt: RenderedPrompt
    completion: Completion | None
    error: str | None = None
    #: Parsed on arrival when the judge is on (its candidates are judged before the consumer reaches them).
    parsed: ParseResult | None = None
    judgments: dict[int, Judgment] | None = None


@dataclass
class LoopTimings:
    """Event-loop time this session spent consuming (parse, filters, dedup, append) and committing (the fsyncs of
    the commits made during a round run in a worker thread, outside this time)."""

    consume_s: float = 0.0
    consumes: int = 0
    commit_s: float = 0.0
    commits: int = 0


@dataclass
class RoundResult:
    next_request_index: int
    accepted: int
    done: bool
    reason: str


class GenerationRun:
    """One run's state: seeds, prompt builder, filters, dedup index and the open run store."""

    def __init__(self, config: GenerationConfig, on_progress: ProgressCallback | None = None):
        self.config = config
        self.on_progress = on_progress
        self.seeds: list[SeedTask] = load_seeds(config.resolved_seeds_path)
        self.builder = PromptBuilder(
            resolve_template(config.prompt_template, config.language),
            self.seeds,
            config.seed,
            config.num_seed_examples,
            config.tasks_per_request,
            config.response_mode,
        )
        self.response_format = None
        if config.response_mode == "structured":
            self.response_format = {
                "type": "json_schema",
                "json_schema": {"name": "generated_tasks", "schema": response_schema(config.tasks_per_request, config.llm.json_string_pattern), "strict": True},
            }
        self.store = RunStore(config.run_dir)
        self.counts = RunCounts(target=config.target)
        self.next_index = 0
        self.curation: CurationChain | None = None
        self.judge = Judge(config) if config.judge.enabled and "judge" in config.curation else None
        self._judge_step: JudgeStep | None = None
        #: Order-independent steps before the judge: what they drop is not worth judging.
        self._prejudge: list = []
        self.faults: Counter = Counter()
        # Run totals committed before the current round; its new client counts from zero on top of them.
        self._base_faults: Counter = Counter()
        self._base_usage: Counter = Counter()
        self._base_endpoints: list[dict[str, Any]] = []
        self._generation_seconds = 0.0
        self._last_commit = 0.0
        self._committing: asyncio.Future | None = None  # a background commit's fsyncs and run.json write
        self._consecutive_request_errors = 0
        #: Where the loop's own time goes, over every round of this session (the benchmark reports it).
        self.loop = LoopTimings()

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def open(self) -> "GenerationRun":
        """Lock and recover the run directory, check the config against it, rebuild filter and dedup state."""
        meta = self.store.open()
        try:
            self._check_fingerprint(meta)
            progress = meta.get("progress", {})
            self.next_index = progress.get("next_request_index", 0)
            counts = meta.get("counts", {})
            self.counts.accepted = counts.get("accepted", 0)
            self.counts.requests = counts.get("requests", 0)
            self.counts.candidates = counts.get("candidates", 0)
            self.counts.rejected = Counter(counts.get("rejected", {}))
            self._generation_seconds = meta.get("timings", {}).get("generation_seconds", 0.0)
            self._rebuild_state(counts.get("steps", {}))
            self.store.update_meta(
                run_name=self.config.run_name,
                status="running",
                error=None,
                config=self.config.public_dict(),
                fingerprint=self.fingerprint(),
                sessions=meta.get("sessions", 0) + 1,
            )
        except BaseException:
            self.store.close()
            raise
        if self.store.resumed:
            log.info("resuming %s at request %d with %d accepted", self.config.run_dir, self.next_index, self.counts.accepted)
        return self

    def close(self) -> None:
        self.store.close()

    def fingerprint(self) -> dict[str, Any]:
        values = _fingerprint_values(self.config.model_dump(mode="json"))
        values["prompts_and_seeds"] = self.builder.fingerprint()
        return values

    def _check_fingerprint(self, meta: dict[str, Any]) -> None:
        previous = meta.get("fingerprint")
        if not previous:
            return
        current = self.fingerprint()
        # A setting added after the run was made counts as unchanged while it keeps its default.
        defaults = _fingerprint_values(GenerationConfig().model_dump(mode="json"))
        changed = sorted(k for k in current if previous.get(k, defaults.get(k)) != current[k])
        if changed:
            raise RunDirectoryError(
                f"{self.config.run_dir} was made with a different config ({', '.join(changed)} changed); "
                "resuming would mix two datasets. Use a new run_name, or restore those settings."
            )

    def _rebuild_state(self, earlier_stats: dict[str, Any]) -> None:
        """The curation chain remembers the seeds, earlier context runs and everything accepted so far."""
        kept: list[tuple[str, str]] = [(s.instruction, s.instances[0].input) for s in self.seeds]
        for name in self.config.dedup.context_runs:
            path = Path(self.config.output_dir) / name / "accepted.jsonl"
            if not path.exists():
                raise RunDirectoryError(f"dedup.context_runs: {path} not found")
            kept += [(r["instruction"], r.get("input", "")) for r in read_jsonl(path)]
        accepted = [(r["instruction"], r.get("input", "")) for r in self.store.accepted_records()]
        if len(accepted) != self.counts.accepted:
            raise RunDirectoryError(
                f"{self.store.run_dir}: accepted.jsonl has {len(accepted)} records but run.json counts {self.counts.accepted}"
            )
        self.curation = build_chain(self.config, kept, accepted, earlier_stats)
        names = self.curation.names
        if "judge" in names:
            self._judge_step = self.curation.steps[names.index("judge")]
            before = self.curation.steps[:names.index("judge")]
            self._prejudge = [step for step in before if step.order_independent]

    @property
    def target_reached(self) -> bool:
        return self.counts.accepted >= self.config.target

    @property
    def requests_exhausted(self) -> bool:
        return self.next_index >= self.config.resolved_max_requests

    @property
    def finished(self) -> bool:
        return self.target_reached or self.requests_exhausted

    @property
    def stop_reason(self) -> str:
        if self.target_reached:
            return "target reached"
        return "max_requests reached" if self.requests_exhausted else "round done"

    # ---- the loop ------------------------------------------------------------------------------------------------
    async def run_round(self, client: LLMClient, max_requests: int | None = None, judge_client: LLMClient | None = None) -> RoundResult:
        """Send and consume requests until the target, ``max_requests`` more requests, or the run's request cap.

        With the judge on, each completion's candidates are judged as soon as it arrives (``judge_client``), while
        generation goes on; the consumer takes a request once it and its judgments are in.
        """
        if self.judge is not None and judge_client is None:
            raise ValueError("the judge is on: run_round needs a judge_client")
        cfg = self.config
        stop = cfg.resolved_max_requests
        if max_requests is not None:
            stop = min(stop, self.next_index + max_requests)
        concurrency = cfg.llm.max_concurrency
        max_ahead = cfg.llm.max_ahead or 4 * concurrency
        pending: dict[asyncio.Task, int] = {}
        judging: dict[asyncio.Task, int] = {}
        # Tasks report themselves done through a callback into ``done_tasks`` (and wake the loop), rather than the loop
        # calling asyncio.wait on every task in flight after each arrival: that costs O(tasks in flight) per arrival
        # (a done-callback added to and removed from each), which at 256 in flight is most of a request's cost.
        done_tasks: list[asyncio.Task] = []
        wake = asyncio.Event()

        def on_done(task: asyncio.Task) -> None:
            done_tasks.append(task)
            wake.set()

        def start(coro, index: int, into: dict[asyncio.Task, int]) -> None:
            task = asyncio.create_task(coro)
            into[task] = index
            task.add_done_callback(on_done)

        arrived: dict[int, Outcome | LLMUnavailableError] = {}
        unjudged: set[int] = set()  # arrived, judgments still coming
        if self.judge is not None:
            self.judge.reset_slots()  # each round runs on its own event loop
        send = consume = self.next_index
        self._start_totals()
        self._last_commit = time.monotonic()
        try:

            def fill() -> bool:
                """Send while a slot is free and the window allows; True if anything was sent."""
                nonlocal send
                limit = min(max_ahead, self._send_budget())
                sent = False
                while len(pending) < concurrency and send < stop and send - consume < limit:
                    start(self._request(client, send), send, pending)
                    send += 1
                    sent = True
                return sent

            while consume < stop and not self.target_reached:
                fill()
                if consume not in arrived or consume in unjudged:
                    if not done_tasks:
                        if not pending and not judging:
                            raise RuntimeError(f"request {consume} was never sent")  # a bug in fill(), not a hang
                        wake.clear()
                        await wake.wait()
                    else:
                        await asyncio.sleep(0)  # as asyncio.wait did: requests just sent get to go out first
                    done, done_tasks[:] = list(done_tasks), []
                    for task in done:
                        generated = task in pending
                        index = pending.pop(task) if generated else judging.pop(task)
                        failure = task.exception()
                        if failure is not None and not isinstance(failure, LLMUnavailableError):
                            raise failure
                        if failure is not None:
                            # A request that failed for good fails the run once every earlier index is consumed,
                            # so that what already arrived before it is kept, not lost with the run.
                            arrived[index] = failure
                            unjudged.discard(index)
                        elif generated:
                            outcome = arrived[index] = task.result()
                            if judge_client is not None and outcome.completion is not None:
                                start(self._judge(judge_client, outcome), index, judging)
                                unjudged.add(index)
                        else:
                            unjudged.discard(index)
                while consume in arrived and consume not in unjudged and not self.target_reached:
                    outcome = arrived.pop(consume)
                    if isinstance(outcome, LLMUnavailableError):
                        raise outcome
                    started = time.perf_counter()
                    self._consume(outcome)
                    self.loop.consume_s += time.perf_counter() - started
                    self.loop.consumes += 1
                    consume += 1
                    self.next_index = consume
                    # After a stall, up to max_ahead results are ready at once: send what each consumed one frees
                    # right away, and let those requests start before consuming on.
                    if fill():
                        await asyncio.sleep(0)
                    if time.monotonic() - self._last_commit >= cfg.commit_interval_s and self._commit_settled():
                        self._commit(client, judge_client, background=True)
        finally:
            for task in [*pending, *judging]:
                task.cancel()
            if pending or judging:
                await asyncio.gather(*pending, *judging, return_exceptions=True)
            committing, self._committing = self._committing, None
            if committing is not None:
                await committing  # its error, if any, is the round's
            self._commit(client, judge_client)
        return RoundResult(self.next_index, self.counts.accepted, self.finished, self.stop_reason)

    def _start_totals(self) -> None:
        """Take the committed run totals as the base that this round's counters add to."""
        meta = self.store.meta
        self._base_faults = Counter(meta.get("faults", {}))
        self._base_usage = Counter(meta.get("usage", {}))
        self._base_endpoints = meta.get("endpoints", [])
        self.faults = Counter()

    def _send_budget(self) -> float:
        """Requests worth sending beyond the oldest unconsumed one, from the yield observed so far."""
        remaining = self.config.target - self.counts.accepted
        if self.counts.requests < 8:
            # No yield observed yet: no more than the target could use if every task were accepted, plus one
            # concurrency's worth (a small run otherwise sends up to max_ahead requests for nothing).
            return math.ceil(remaining / self.config.tasks_per_request) + self.config.llm.max_concurrency
        per_request = max(self.counts.accepted / self.counts.requests, 0.05)
        return math.ceil(1.25 * remaining / per_request) + 1

    async def _request(self, client: LLMClient, index: int) -> Outcome:
        prompt = self.builder.render(index)
        try:
            completion = await client.complete(index, prompt.text, prompt.sampling_seed, self.response_format)
        except RequestRejectedError as exc:
            return Outcome(prompt, None, str(exc))
        return Outcome(prompt, completion)

    async def _judge(self, judge_client: LLMClient, outcome: Outcome) -> None:
        """Parse a completion on arrival and judge the candidates that no order-independent step will drop."""
        completion = outcome.completion
        outcome.parsed = parse_completion(completion.text, completion.finish_reason, self.config.response_mode)
        index = outcome.prompt.index
        worth_judging = []
        for position, candidate in enumerate(outcome.parsed.candidates):
            record = Record.from_candidate(candidate, index, position)
            if all(step.check(record) is None for step in self._prejudge):
                worth_judging.append((position, candidate))
        outcome.judgments = await self.judge.judge_request(judge_client, index, worth_judging)

    def _consume(self, outcome: Outcome) -> None:
        index = outcome.prompt.index
        accepted: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        self.counts.requests += 1
        if outcome.completion is None:
            self._consecutive_request_errors += 1
            if self._consecutive_request_errors >= MAX_CONSECUTIVE_REQUEST_ERRORS:
                raise LLMUnavailableError(
                    f"the server refused {self._consecutive_request_errors} requests in a row; last: {outcome.error}"
                )
            rejected.append(request_rejection(index, "request_error", outcome.error or ""))
        else:
            self._consecutive_request_errors = 0
            completion = outcome.completion
            parsed = outcome.parsed or parse_completion(completion.text, completion.finish_reason, self.config.response_mode)
            if self._judge_step is not None and outcome.judgments is not None:
                self._judge_step.provide(index, outcome.judgments)
            for failure in parsed.failures:
                self.faults[failure.reason] += 1
                rejected.append(request_rejection(index, failure.reason, failure.detail, finish_reason=completion.finish_reason,
                                                  raw=completion.text[:RAW_SNIPPET_CHARS]))
            for position, candidate in enumerate(parsed.candidates):
                self.counts.candidates += 1
                record = Record.from_candidate(candidate, index, position, outcome.prompt.seed_ids)
                verdict = self.curation.check(record)
                if verdict is not None:
                    step, drop = verdict
                    rejected.append(record.rejected_dict(drop, step.name))
                    continue
                self.curation.accepted(record)
                accepted.append(record.accepted_dict())
                self.counts.accepted += 1
                if self.target_reached:
                    break
        if self._judge_step is not None:
            self._judge_step.forget_request(index)
        for record in rejected:
            self.counts.rejected[record["reason"]] += 1
        self.store.append(accepted, rejected)
        if self.on_progress is not None:
            self.on_progress(self.counts)

    def _commit_settled(self) -> bool:
        """True when no background commit is running (one that failed raises its error here)."""
        committing = self._committing
        if committing is None:
            return True
        if not committing.done():
            return False
        self._committing = None
        committing.result()
        return True

    def _commit(self, client: LLMClient, judge_client: LLMClient | None = None, background: bool = False) -> None:
        """Commit the run so far. ``background``: the fsyncs and the run.json write go to a worker thread, so a slow
        disk does not hold up requests; the commit point moves once they are done (one such commit at a time)."""
        started = time.perf_counter()
        now = time.monotonic()
        self._generation_seconds += now - self._last_commit
        self._last_commit = now
        faults = self._base_faults + client.stats.faults + self.faults
        usage = self._base_usage + Counter({
            "requests": client.stats.usage.requests,
            "prompt_tokens": client.stats.usage.prompt_tokens,
            "completion_tokens": client.stats.usage.completion_tokens,
            "retries": client.stats.retries,
        })
        if judge_client is not None:
            judge = judge_client.stats
            usage += Counter({"judge_requests": judge.usage.requests, "judge_prompt_tokens": judge.usage.prompt_tokens,
                              "judge_completion_tokens": judge.usage.completion_tokens, "judge_retries": judge.retries})
            faults = faults + Counter({f"judge_{kind}": n for kind, n in judge.faults.items()})
        seconds = self._generation_seconds
        extra: dict[str, Any] = {}
        if self.judge is not None:
            spent = usage["judge_prompt_tokens"] + usage["judge_completion_tokens"]
            extra["judge"] = {
                "requests": usage["judge_requests"], "prompt_tokens": usage["judge_prompt_tokens"],
                "completion_tokens": usage["judge_completion_tokens"],
                "tokens_per_accepted": round(spent / self.counts.accepted, 1) if self.counts.accepted else None,
            }
        committed = self.store.prepare_commit(
            self.next_index,
            counts={
                "accepted": self.counts.accepted, "requests": self.counts.requests, "candidates": self.counts.candidates,
                "rejected": dict(sorted(self.counts.rejected.items())),
                "steps": self.curation.stats() if self.curation else {},
            },
            faults=dict(sorted(faults.items())),
            usage=dict(usage),
            timings={
                "generation_seconds": round(seconds, 3),
                "accepted_per_second": round(self.counts.accepted / seconds, 3) if seconds else 0.0,
            },
            endpoints=_merge_endpoints(self._base_endpoints, client.endpoint_summary()),
            **extra,
        )
        if background:
            self._committing = asyncio.get_running_loop().run_in_executor(None, self.store.write_commit, committed)
        else:
            self.store.write_commit(committed)
        self.loop.commit_s += time.perf_counter() - started
        self.loop.commits += 1


def _fingerprint_values(data: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for dotted in _DETERMINISM_FIELDS:
        node: Any = data
        for part in dotted.split("."):
            node = node[part]
        values[dotted] = node
    return values


def _merge_endpoints(base: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-URL request and failure counts of earlier rounds and sessions plus this round's client."""
    merged = {e["url"]: dict(e) for e in base}
    for e in current:
        total = merged.setdefault(e["url"], {"url": e["url"], "requests": 0, "failures": 0})
        total["requests"] += e["requests"]
        total["failures"] += e["failures"]
    return list(merged.values())
