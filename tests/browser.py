"""What users see in the Prefect UI, checked in a real headless Chromium driven by Selenium.

Only Debian's ``chromium`` and ``chromium-driver`` packages are used (``make install`` installs them where it can):
the driver's path is always given to Selenium, so Selenium Manager never runs and nothing downloads a browser.

The Prefect test harness (``prefect_test_harness``) serves the API only (it starts its server with
``PREFECT_UI_ENABLED=0`` and ephemeral, and answers 404 at ``/``), so :func:`start_ui_server` starts a real
``prefect server start`` on a free 127.0.0.1 port with a private ``PREFECT_HOME`` (its own SQLite database). The UI
is served from the static files in the installed prefect wheel (``prefect/server/ui`` and ``ui-v2``): no build, no
network. Both of Prefect 3.9's UIs are served: the V2 (React) UI under ``/v2``, where a browser without a saved
preference lands from ``/``, and the V1 (Vue) UI at the root, where the "View at" links in flow run logs point.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PREFECT = Path(sys.executable).with_name("prefect")  # the CLI of the Python running the tests
UIS = ("v2", "v1")

#: Every image of the page as (alt, naturalWidth, complete): naturalWidth is 0 for an image that failed to decode.
_IMAGES_JS = "return Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.complete]);"


def browser_missing() -> str | None:
    """Why no browser test can run here (naming what is missing), or None."""
    missing = [f"{path} (Debian package {package})" for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))
               if not path.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (the project's test extra)")
    if not missing:
        return None
    return (f"no headless browser: {', '.join(missing)} missing; `make install` installs them as root with apt-get, "
            "or run `apt-get install chromium chromium-driver`")


def require_browser() -> None:
    """Skip the calling test, naming what is missing, where Chromium or its driver is not installed; under ``CI``
    fail instead, as the vLLM tests do: `make install` installs the browser there, so a missing one is a broken
    install, not a reason for a green run without the test."""
    import pytest

    if reason := browser_missing():
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def chromium_driver(width: int = 1400, height: int = 1000, page_load_timeout: float = 60) -> Iterator:
    """A headless Chromium (Selenium WebDriver) that reaches 127.0.0.1 and nothing else; quit on exit.

    Raises RuntimeError naming what is missing where Chromium or its driver is not installed (tests call
    :func:`require_browser` first to skip instead).
    """
    if reason := browser_missing():
        raise RuntimeError(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",  # containers' /dev/shm is often 64 MB: too small for the renderer
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        # Offline and deterministic: the V2 UI fetches an analytics config from the internet; no test may need it.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, for failure messages
    # An explicit driver path: Selenium skips Selenium Manager, which would otherwise download a browser and driver.
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(page_load_timeout)
        yield driver
    finally:
        driver.quit()


def open_and_wait(driver, url: str, text_or_selector: str, timeout: float = 60) -> float:
    """Open ``url`` and wait until the page shows ``text_or_selector``; returns the seconds it took.

    A string starting with ``css:`` waits for a visible element matching the CSS selector after it; anything else
    waits for that text in the rendered page (``document.body.innerText``: what is rendered, including text
    scrolled out of view inside an overflowing element). The SPA renders after the page "loads", so this is what to
    wait for. On timeout, raises AssertionError with the URL, the page's text and its console errors.
    """
    started = time.monotonic()
    driver.get(url)
    wait_for(driver, text_or_selector, timeout)
    return time.monotonic() - started


def wait_for(driver, text_or_selector: str, timeout: float = 60):
    """Wait on the current page for a text or a ``css:`` selector (see :func:`open_and_wait`); returns the matching
    elements (or True for a text). On timeout, raises AssertionError with the URL, the page's text and its console
    errors."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    if text_or_selector.startswith("css:"):
        selector = text_or_selector[4:]

        def shown(d):
            return [e for e in d.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()] or False
    else:
        def shown(d):
            return text_or_selector in page_text(d)
    try:
        return until(driver, shown, timeout)
    except TimeoutException:
        raise AssertionError(f"{text_or_selector!r} not shown within {timeout} s at {driver.current_url}\n"
                             f"page text: {page_text(driver)[:2000]!r}\nconsole: {console_errors(driver)}") from None


def until(driver, condition, timeout: float = 60):
    """WebDriverWait(...).until(condition), retrying where the SPA re-rendered an element under the condition's feet."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def page_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''") or ""


def console_errors(driver) -> list[str]:
    """The browser console's SEVERE messages so far (each call returns only the new ones)."""
    try:
        return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
    except Exception:  # noqa: BLE001 - diagnostics only
        return []


def images_loaded(driver, timeout: float = 10) -> list[tuple[str, int]]:
    """Every image on the page as (alt, naturalWidth), once all have finished loading (or ``timeout`` passed).

    naturalWidth > 0 means the image loaded and decoded; 0 means a broken image. Data URIs decode asynchronously,
    so an image can be in the DOM a moment before it is complete.
    """
    deadline = time.monotonic() + timeout
    while True:
        images = driver.execute_script(_IMAGES_JS)
        if all(complete for _, _, complete in images) or time.monotonic() > deadline:
            return [(alt, width) for alt, width, _ in images]
        time.sleep(0.2)


def images_drawn(driver) -> list[tuple[str, float]]:
    """Every loaded image as (alt, the fraction of its pixels that are not transparent), drawn at natural size.

    naturalWidth comes from the PNG header alone: a truncated PNG has it, yet shows a sliver. A chart on an opaque
    background (matplotlib's default) that decoded completely covers 1.0. Call after :func:`images_loaded`.
    """
    return [tuple(pair) for pair in driver.execute_script("""
        return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).map(i => {
          const c = document.createElement('canvas');
          c.width = i.naturalWidth; c.height = i.naturalHeight;
          const g = c.getContext('2d'); g.drawImage(i, 0, 0);
          let data;
          try { data = g.getImageData(0, 0, c.width, c.height).data; } catch (e) { return [i.alt, -1]; }  // cross-origin
          let drawn = 0;
          for (let k = 3; k < data.length; k += 4) if (data[k] > 0) drawn++;
          return [i.alt, drawn / (c.width * c.height)];
        });""")]


def screenshot(driver, path: Path | str, full_page: bool = True) -> Path:
    """Save a PNG of the page; ``full_page`` grows the window to the document's height first (headless only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    if full_page:
        height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
        driver.set_window_size(size["width"], min(max(height, size["height"]), 8000))
    try:
        driver.save_screenshot(str(path))
    finally:
        if full_page:
            driver.set_window_size(size["width"], size["height"])
    return path


def overflowing_tables(driver) -> list[dict]:
    """Tables wider than the box that shows them (a user must scroll sideways to read their last columns)."""
    return driver.execute_script("""
        const out = [];
        for (const t of document.querySelectorAll('table')) {
          const box = t.parentElement;
          if (box && box.scrollWidth > box.clientWidth + 1)
            out.push({table_width: t.scrollWidth, visible_width: box.clientWidth,
                      headers: Array.from(t.querySelectorAll('th')).map(h => h.innerText.trim())});
        }
        return out;""")


# --- A UI-serving Prefect server -------------------------------------------------------------------------------


@dataclass
class PrefectUIServer:
    """A ``prefect server start`` of this test run: API at ``api_url``, UI at ``ui_url``."""

    api_url: str
    ui_url: str
    home: Path
    log: Path
    process: subprocess.Popen = field(repr=False)
    startup_s: float = 0.0

    def artifact_url(self, artifact_id, ui: str = "v2") -> str:
        """The page of one artifact (its rendered content): ``/v2/artifacts/artifact/<id>`` or ``/artifacts/artifact/<id>``."""
        return f"{self.ui_url}{_prefix(ui)}/artifacts/artifact/{artifact_id}"

    def flow_run_url(self, flow_run_id, ui: str = "v2", tab: str | None = None) -> str:
        """A flow run's page; the V2 UI opens a tab from ``?tab=`` (``Artifacts``), the V1 UI resets it to Logs."""
        query = f"?tab={tab}" if tab else ""
        return f"{self.ui_url}{_prefix(ui)}/runs/flow-run/{flow_run_id}{query}"

    def stop(self) -> None:
        _stop_group(self.process)


def _prefix(ui: str) -> str:
    if ui not in UIS:
        raise ValueError(f"ui must be one of {UIS}, not {ui!r}")
    return "/v2" if ui == "v2" else ""


def start_ui_server(home: Path, timeout: float = 180, services: bool = True, attempts: int = 3) -> PrefectUIServer:
    """Start ``prefect server start`` with its UI on a free 127.0.0.1 port, ``home`` as PREFECT_HOME (database,
    UI settings, log ``home/server.log``); returns once the API answers. Stop it with ``.stop()``.

    ``services`` (the default) runs Prefect's background services as ``make up`` does (among them the task run
    recorder and the event persister, which turn the events a flow sends into the task runs and the event feed the
    UI shows). ``services=False`` (``--no-services``) serves the API and the UI only: artifacts and flow runs still
    show; it starts no faster (both ~15 s here), but idles quieter on a small machine.
    """
    from pipeline.server import free_port

    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # no outside profile or API URL
    for _ in range(attempts):  # a free port can be taken by another process before the server binds it
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        env.update(PREFECT_HOME=str(home), PREFECT_API_URL=api_url, PREFECT_UI_API_URL=api_url,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false")
        command = [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        if not services:
            command.append("--no-services")
        started = time.monotonic()
        with log.open("w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # its own process group: stop() ends all of it
        server = PrefectUIServer(api_url, f"http://127.0.0.1:{port}", home, log, process)
        try:
            _wait_healthy(server, timeout)
        except _PortTaken:
            server.stop()
            continue
        except BaseException:
            server.stop()
            raise
        server.startup_s = time.monotonic() - started
        return server
    raise RuntimeError(f"no free port for the Prefect server after {attempts} attempts; see {log}")


class _PortTaken(Exception):
    pass


def _wait_healthy(server: PrefectUIServer, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            text = server.log.read_text(errors="replace")
            if "address already in use" in text:
                raise _PortTaken()
            raise RuntimeError(f"the Prefect server exited with {server.process.returncode}:\n{text[-3000:]}")
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the Prefect server did not answer within {timeout} s:\n{server.log.read_text(errors='replace')[-3000:]}")


def _stop_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # anything of its group still there (uvicorn workers)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


_RUN_FLOW = """
import importlib, json, sys
module, name = sys.argv[1].split(":")
flow = getattr(importlib.import_module(module), name)
state = flow(**json.loads(sys.argv[2]), return_state=True)
print("FLOW_RUN " + json.dumps({"id": str(state.state_details.flow_run_id), "type": state.type.value,
                                "message": state.message}))
"""


def run_flow(server: PrefectUIServer, flow: str, parameters: dict | None = None, timeout: float = 600) -> str:
    """Run the flow ``"module:attribute"`` (importable from the project root) against ``server`` in a fresh Python
    process; returns its flow run id. Raises AssertionError with the output if the run does not complete.

    A separate process, because a pytest session may have the Prefect test harness on: a flow run in the test
    process follows a temporarily changed PREFECT_API_URL, but Prefect's process-wide events worker keeps talking to
    the harness (the run's events, e.g. ``prefect.artifact.created``, fail with 404 "Flow not found").
    ``parameters`` go as JSON; the flow validates them as usual (a dict becomes its pydantic config).
    """
    import json
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=server.api_url, PREFECT_HOME=str(server.home / "client"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _RUN_FLOW, flow, json.dumps(parameters or {})], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    line = next((x for x in done.stdout.splitlines() if x.startswith("FLOW_RUN ")), None)
    assert done.returncode == 0 and line, f"{flow} did not run (exit {done.returncode}):\n{output[-4000:]}"
    run = json.loads(line.removeprefix("FLOW_RUN "))
    assert run["type"] == "COMPLETED", f"{flow} ended {run['type']}: {run['message']}\n{output[-4000:]}"
    return run["id"]


@contextlib.contextmanager
def _using_api(api_url: str) -> Iterator[None]:
    """Prefect clients made inside talk to ``api_url`` (not the session's test harness). Not for running flows:
    see :func:`run_flow`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield


def read_artifacts(api_url: str, flow_run_id=None, key: str | None = None) -> list:
    """The artifacts of a flow run and/or with a key, read from ``api_url``'s API (newest first)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        with _using_api(api_url):
            async with get_client() as client:
                return await client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None,
                        key=ArtifactFilterKey(any_=[key]) if key else None),
                    sort=ArtifactSort.CREATED_DESC)

    return asyncio.run(read())


def open_flow_run_artifact(driver, server: PrefectUIServer, flow_run_id, key: str, ui: str = "v2",
                           timeout: float = 60) -> str:
    """Go where a user goes: the flow run's page, its Artifacts tab, then the card of the artifact ``key``.

    Returns the artifact page's URL once it is open (its content may still be rendering: wait for what you expect).
    """
    from selenium.webdriver.common.by import By

    if ui == "v2":
        open_and_wait(driver, server.flow_run_url(flow_run_id, "v2", tab="Artifacts"), key, timeout)
    else:  # the V1 UI drops ?tab= while the run loads: click the tab
        open_and_wait(driver, server.flow_run_url(flow_run_id, "v1"), "css:li.p-tab", timeout)

        def click_tab(d):
            for tab in d.find_elements(By.CSS_SELECTOR, "li.p-tab"):
                if tab.text.strip() == "Artifacts" and tab.is_displayed():
                    tab.click()
                    return True
            return False

        until(driver, click_tab, timeout)
        wait_for(driver, key, timeout)

    def click_card(d):
        for link in d.find_elements(By.CSS_SELECTOR, "a[href*='/artifacts/artifact/']"):
            if key in link.text.split("\n"):
                href = link.get_attribute("href")
                link.click()  # the SPA's own navigation, as a user's click
                return href
        return False

    href = until(driver, click_card, timeout)
    until(driver, lambda d: d.current_url.split("?")[0] == href.split("?")[0], timeout)
    return href
