"""Run `selfinstruct` and SIGKILL it at a chosen point, to test crash safety.

    python -m tests.crash_runner POINT N selfinstruct-args...

POINT is one of: request (after the Nth completion arrives, others in flight), write (halfway through the Nth
append to accepted.jsonl), dedup (inside the Nth ROUGE-L check), judge (after the Nth judgment arrives, other
judge and generation requests in flight), commit (inside the Nth commit: run.json written
under its temporary name, not renamed), export (after alpaca_data.json, before the HF dataset), finished (after
the run and its export, before the process exits), none. The patches live here, not in the pipeline: production code has no crash hooks.
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after_nth(n: int):
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] >= n

    return hit


def install(point: str, n: int) -> None:
    hit = _after_nth(n)
    if point == "request":
        from pipeline.llm import LLMClient

        original = LLMClient.complete

        async def complete(self, *args, **kwargs):
            result = await original(self, *args, **kwargs)
            if hit():
                _die()
            return result

        LLMClient.complete = complete
    elif point == "write":
        from pipeline.files import jsonl_bytes
        from pipeline.store import RunStore

        original_append = RunStore.append

        def append(self, accepted, rejected):
            if accepted and hit():
                data = jsonl_bytes(accepted)
                self._accepted.write(data[: len(data) // 2])  # a torn line on disk
                self._accepted.flush()
                os.fsync(self._accepted.fileno())
                _die()
            return original_append(self, accepted, rejected)

        RunStore.append = append
    elif point == "dedup":
        from pipeline.dedup import RougeDedup

        original_check = RougeDedup.check

        def check(self, text):
            if hit():
                _die()
            return original_check(self, text)

        RougeDedup.check = check
    elif point == "judge":
        from pipeline.llm import LLMClient

        original = LLMClient.complete

        async def complete(self, index, prompt, seed, response_format=None):
            result = await original(self, index, prompt, seed, response_format)
            if response_format and response_format["json_schema"]["name"] == "judgment" and hit():
                _die()
            return result

        LLMClient.complete = complete
    elif point == "export":
        from pipeline import export

        def write_hf_dataset(run_dir, records):
            _die()

        export._write_hf_dataset = write_hf_dataset
    elif point == "commit":
        # Inside the Nth commit: the new run.json is written and fsynced under a temporary name, not yet renamed.
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith("run.json") and hit():
                _die()
            return original_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif point == "finished":
        # After the run and its export returned, before the process exits.
        from pipeline import lifecycle

        original_run_generation = lifecycle.run_generation

        def run_generation(*args, **kwargs):
            result = original_run_generation(*args, **kwargs)
            _die()
            return result

        lifecycle.run_generation = run_generation
    elif point != "none":
        raise SystemExit(f"unknown crash point {point!r}")


if __name__ == "__main__":
    point, count, *args = sys.argv[1:]
    install(point, int(count))
    from pipeline.cli import main

    sys.exit(main(args))
