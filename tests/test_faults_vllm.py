"""A run through a fault-injecting proxy in front of the real vLLM CPU server still reaches its target."""

from __future__ import annotations

import json

import pytest

from pipeline.lifecycle import generate
from tests.conftest import tiny_llm_config
from tests.fault_proxy import ALL_FAULTS, FaultProxy
from tests.test_generate_vllm import make_config, read_lines

pytestmark = pytest.mark.vllm

#: Content faults first: they hit the lowest request indices, which are consumed before the target is reached.
SCRIPT = ["invalid_json_content", "finish_length", "http_500", "http_503", "http_429", "connection_reset",
          "truncated_body", "hang"]
assert sorted(SCRIPT) == sorted(ALL_FAULTS)


def test_run_reaches_target_through_20_percent_faults(vllm_server, tiny_llama, tmp_path):
    # Every kind once up front (so none is left to chance), then a 20 % random fault rate. Random hangs are left
    # out only to bound the test's time: each costs a full request timeout, which must be generous on 2 busy cores.
    random_kinds = [kind for kind in ALL_FAULTS if kind != "hang"]
    with FaultProxy(vllm_server.base_url, fault_rate=0.2, faults=random_kinds, seed=3, hang_seconds=120,
                    script=SCRIPT) as proxy:
        llm = tiny_llm_config([proxy.v1_url], str(tiny_llama), request_timeout_s=40, max_retries=8,
                              backoff_initial_s=0.2, backoff_max_s=1.5, max_concurrency=8)
        config = make_config(tmp_path, [proxy.v1_url], str(tiny_llama), run_name="faulty", target=32, llm=llm)
        summary = generate(config, export=False)
        injected = proxy.counts

    assert summary.accepted >= config.target
    meta = json.loads((config.run_dir / "run.json").read_text())
    faults = meta["faults"]
    # Retried at the HTTP level, counted by kind.
    assert faults["http_500"] >= 1 and faults["http_503"] >= 1 and faults["http_429"] >= 1
    assert faults["timeout"] >= 1  # the hung response ended by the client timeout
    assert faults["connection_error"] >= 2  # the reset and the truncated body
    for kind in ("http_500", "http_503", "http_429"):
        assert faults[kind] <= injected[kind]
    assert faults["connection_error"] <= injected["connection_reset"] + injected["truncated_body"]
    assert meta["usage"]["retries"] >= 6

    # Unusable completions are not retried: they are recorded with their reason and the run goes on.
    rejected = read_lines(config.run_dir / "rejected.jsonl")
    reasons = {r["reason"] for r in rejected}
    assert {"parse_error", "truncated"} <= reasons, reasons
    assert faults["parse_error"] + faults["truncated"] == sum(r["reason"] in ("parse_error", "truncated") for r in rejected)
    truncated = [r for r in rejected if r["reason"] == "truncated"]
    assert all(r["finish_reason"] == "length" for r in truncated)
    assert meta["counts"]["accepted"] == len(read_lines(config.run_dir / "accepted.jsonl"))
