"""What a user sees of a run's quality report in the Prefect UI, in a real headless Chromium.

A demo-sized ``self-instruct`` flow run (the tiny model on the session's real vLLM CPU server) reports to a real
UI-serving Prefect server. The browser goes where a user goes, in both of Prefect 3.9's UIs: the flow run, its
Artifacts tab, the ``<run>-report`` artifact; it checks that the report's numbers (the accepted count and every
funnel stage) are on the rendered page and that every chart loaded and is drawn whole. Fails under ``CI`` and skips
elsewhere, naming what is missing, where Chromium or chromedriver is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from tests.browser import (
    chromium_driver, images_drawn, images_loaded, open_flow_run_artifact, page_text, read_artifacts, require_browser,
    run_flow, screenshot, start_ui_server, wait_for,
)
from tests.test_generate_vllm import make_config

pytestmark = [pytest.mark.prefect, pytest.mark.vllm]

RUN_NAME = "uireport"
#: `UPDATE_UI_SCREENSHOT=1 make test PYTEST_ARGS=tests/test_ui_browser.py` refreshes the README's screenshot.
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "ui-report.png"


def png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">I", data[16:20])[0]  # IHDR's width


def row_shown(text: str, *cells: str) -> bool:
    """Whether a rendered table row starts with ``cells`` (innerText separates a row's cells with tabs)."""
    return any(line.split("\t")[: len(cells)] == list(cells) for line in text.splitlines())


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    require_browser()
    server = start_ui_server(tmp_path_factory.mktemp("prefect-ui"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    require_browser()
    with chromium_driver() as driver:
        yield driver


@pytest.fixture(scope="module")
def report_run(ui_server, vllm_server, tiny_llama, tmp_path_factory):
    """One demo-sized self-instruct flow run on the UI server: (flow run id, run directory)."""
    config = make_config(tmp_path_factory.mktemp("ui-run"), [vllm_server.base_url], str(tiny_llama), run_name=RUN_NAME, target=12)
    flow_run_id = run_flow(ui_server, "flows.self_instruct:self_instruct", {"config": config.model_dump(mode="json")})
    keys = {a.key for a in read_artifacts(ui_server.api_url, flow_run_id=flow_run_id)}
    assert f"{RUN_NAME}-report" in keys, sorted(keys)
    return flow_run_id, config.run_dir


@pytest.mark.parametrize("ui", ["v2", "v1"])
def test_report_numbers_and_charts_render_in_the_prefect_ui(ui, ui_server, browser, report_run, tmp_path):
    flow_run_id, run_dir = report_run
    report = json.loads((run_dir / "quality.json").read_text(encoding="utf-8"))
    charts = {path.stem: path for path in sorted((run_dir / "charts").glob("*.png"))}
    alts = {"funnel": "funnel", "rouge_to_seed": "ROUGE-L to the nearest seed", "lengths": "lengths"}
    assert set(alts) <= set(charts), sorted(charts)

    open_flow_run_artifact(browser, ui_server, flow_run_id, f"{RUN_NAME}-report", ui=ui)
    wait_for(browser, f"Quality report of {RUN_NAME}")
    for alt in alts.values():
        wait_for(browser, f"css:img[alt='{alt}']")
    shot = screenshot(browser, tmp_path / f"report-{ui}.png")

    text = page_text(browser)
    problems = [f"funnel row {stage['stage']!r} | {stage['count']:,} is not on the page" for stage in report["funnel"]
                if not row_shown(text, stage["stage"], f"{stage['count']:,}")]
    accepted = report["figures"]["accepted"]
    if not row_shown(text, "accepted records", f"{accepted:,}"):
        problems.append(f"the accepted count ({accepted:,}) is not on the page")
    widths, drawn = dict(images_loaded(browser)), dict(images_drawn(browser))
    for name, alt in alts.items():
        if widths.get(alt) != png_width(charts[name]):  # naturalWidth: 0 for a broken image, None for none
            problems.append(f"chart {alt!r} did not load (images as (alt, naturalWidth): {widths})")
        elif drawn.get(alt) != 1.0:  # a truncated PNG keeps its full width: count the pixels drawn
            problems.append(f"chart {alt!r} is only partly drawn: {drawn.get(alt)}")
    assert not problems, f"{ui} UI, {browser.current_url}, screenshot {shot}:\n" + "\n".join(problems)
    if ui == "v2" and os.environ.get("UPDATE_UI_SCREENSHOT"):
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)
