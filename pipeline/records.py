"""The record type that flows through every step, and the shapes it is stored in.

A :class:`Candidate` is what parsing a completion yields: instruction, input and output. The engine wraps each
in a :class:`Record` that knows where it came from (request and position) and collects what curation steps
write about it (``annotations``: the ROUGE-L score, a judge's rating). A step that drops a record says why with a
:class:`Drop`: a reason, a human-readable detail and machine-readable evidence, all of which go to
``rejected.jsonl``. Generation, curation and export import from here; none of them imports another for these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Candidate:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class Drop:
    """A step's reason to reject a record, with the evidence behind it (stored as fields of the rejected record)."""

    reason: str
    detail: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    """One candidate task on its way through curation."""

    request_index: int
    candidate_index: int
    instruction: str
    input: str
    output: str
    seed_ids: tuple[str, ...] = ()
    #: What steps wrote about the record (each step declares these names in ``writes``), in the order written.
    annotations: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_candidate(cls, candidate: Candidate, request_index: int, candidate_index: int,
                       seed_ids: tuple[str, ...] = ()) -> "Record":
        return cls(request_index, candidate_index, candidate.instruction, candidate.input, candidate.output, tuple(seed_ids))

    def _fields(self) -> dict[str, Any]:
        return {"request_index": self.request_index, "candidate_index": self.candidate_index,
                "instruction": self.instruction, "input": self.input, "output": self.output}

    def accepted_dict(self) -> dict[str, Any]:
        """The line of ``accepted.jsonl``: the task, what steps wrote about it, and the seeds its prompt showed."""
        return {**self._fields(), **self.annotations, "seed_ids": list(self.seed_ids)}

    def rejected_dict(self, drop: Drop, step: str) -> dict[str, Any]:
        """The line of ``rejected.jsonl``: the task, the reason, its evidence, and the step that dropped it."""
        return {**self._fields(), "reason": drop.reason, "detail": drop.detail, **drop.evidence, "step": step}


def request_rejection(request_index: int, reason: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A ``rejected.jsonl`` line for a whole request that yielded no candidate (refused, unparsable, truncated)."""
    return {"request_index": request_index, "reason": reason, "detail": detail, **extra}
