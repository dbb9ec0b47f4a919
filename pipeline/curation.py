"""The curation chain: every stage between a parsed candidate and ``accepted.jsonl`` is a :class:`Step`.

In the style of datatrove's filters and distilabel's tasks:

- a step takes a :class:`~pipeline.records.Record` and returns ``None`` to keep it, or a
  :class:`~pipeline.records.Drop` with a named reason and its evidence (nothing is discarded silently: the run
  writes every drop to ``rejected.jsonl``);
- it declares the record fields it ``reads`` and the annotations it ``writes`` (e.g. ROUGE-L's ``rouge_max``),
  so steps are interchangeable and their outputs documented;
- it is told, through :meth:`Step.accepted`, when a record passed *every* step, so steps that remember what
  was kept (exact duplicates, the ROUGE-L index) only ever remember accepted records;
- :class:`CurationChain` runs the steps in their configured order, the first drop wins, and counts per step
  what it kept, dropped and spent (seconds, and tokens for steps that call a model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

from pipeline.records import Drop, Record


class Step:
    """Base class of curation steps. Subclasses set ``name`` and implement :meth:`check`."""

    name: ClassVar[str] = "step"
    #: Record fields the step looks at.
    reads: ClassVar[tuple[str, ...]] = ("instruction",)
    #: Annotations the step writes onto kept records (``Record.annotations``).
    writes: ClassVar[tuple[str, ...]] = ()
    #: True when ``check`` depends on the record alone, not on what was kept before it: such a step's verdict
    #: can be known as soon as a completion arrives, in any order (the engine uses that to skip judging records
    #: that a cheaper step will drop).
    order_independent: ClassVar[bool] = False

    def check(self, record: Record) -> Drop | None:  # pragma: no cover - abstract
        """``None`` keeps the record; a :class:`Drop` rejects it."""
        raise NotImplementedError

    def accepted(self, record: Record) -> None:
        """Called once a record passed every step, for steps that remember what was kept."""

    def tokens_spent(self) -> int:
        """Model tokens this step has used so far (steps that call a model override this)."""
        return 0


@dataclass
class StepStats:
    kept: int = 0
    dropped: int = 0
    seconds: float = 0.0
    tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": self.dropped, "seconds": round(self.seconds, 3), "tokens": self.tokens}


class CurationChain:
    """Runs steps in order; the first drop wins. Keeps per-step stats, added to those of earlier sessions."""

    def __init__(self, steps: Sequence[Step], earlier: Mapping[str, Mapping[str, Any]] | None = None):
        names = [s.name for s in steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"curation steps must have distinct names; repeated: {', '.join(duplicates)}")
        self.steps = list(steps)
        self._stats = {s.name: StepStats() for s in self.steps}
        self._ordered = [(s, self._stats[s.name]) for s in self.steps]
        self._earlier = {name: dict(values) for name, values in (earlier or {}).items()}
        self._tokens_at_start = {s.name: s.tokens_spent() for s in self.steps}

    def check(self, record: Record) -> tuple[Step, Drop] | None:
        """The step that dropped the record and why, or ``None`` if every step kept it."""
        clock = time.perf_counter
        started = clock()
        for step, stats in self._ordered:
            drop = step.check(record)
            now = clock()  # one clock read per step: each step's end is the next one's start
            stats.seconds += now - started
            started = now
            if drop is not None:
                stats.dropped += 1
                return step, drop
            stats.kept += 1
        return None

    def accepted(self, record: Record) -> None:
        for step in self.steps:
            step.accepted(record)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per step, in chain order: kept, dropped, seconds and tokens, over every session of the run."""
        totals: dict[str, dict[str, Any]] = {}
        for step in self.steps:
            stats = self._stats[step.name]
            stats.tokens = step.tokens_spent() - self._tokens_at_start[step.name]
            current = stats.as_dict()
            earlier = self._earlier.get(step.name, {})
            totals[step.name] = {key: round(value + earlier.get(key, 0), 3) if key == "seconds" else value + earlier.get(key, 0)
                                 for key, value in current.items()}
        return totals

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]


