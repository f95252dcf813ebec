"""The notebooks in the real UI: JupyterLab on loopback, driven by headless Chromium (Debian's ``chromium``
through Playwright's Python API; no browser download). Notebook 00 runs all its cells without an error
output and shows its figure; in notebook 03, choosing another defense in the explorer's dropdown redraws
the figure.

Skipped where Chromium or Playwright is missing (``.ci/run`` installs both, so CI runs it). The notebooks
run from a copy, so the UI's autosave never writes outputs into the repository.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not os.environ.get("FEDREPRO_DATA"), reason="FEDREPRO_DATA not set (CI extracts the data)"),
]
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in front
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 over a copy of the notebooks; yields (base URL, token)."""
    pytest.importorskip("playwright.sync_api")
    work = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", work / "notebooks")
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "TQDM_DISABLE": "1", "JUPYTER_CONFIG_DIR": str(work / "config"),
           "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work / 'notebooks'}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start within 60 s")
    yield f"http://127.0.0.1:{port}", token
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_and_run_all(browser, lab, notebook: str, timeout_s: float):
    """Open ``notebook`` in JupyterLab, Run → Run All Cells, wait until no cell is queued or running."""
    url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/tree/{notebook}?reset&token={token}", timeout=60_000)  # reset: only this notebook open
    page.wait_for_selector(f"{PANEL} .jp-Cell", timeout=60_000)
    page.wait_for_function("() => document.body.innerText.includes('Idle')", timeout=60_000)  # kernel ready
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    # queued and running cells show [*]; done when some show a number and none a star (hidden inputs show none)
    page.wait_for_function("() => { const p = [...document.querySelectorAll("
                           f"'{PANEL} .jp-CodeCell .jp-InputArea-prompt')]"
                           ".map(e => e.textContent); return p.some(t => /\\[\\d+\\]/.test(t)) && "
                           "!p.some(t => t.includes('*')); }", timeout=timeout_s * 1000)
    return page


def error_outputs(page) -> list[str]:
    return page.locator(f"{PANEL} [data-mime-type='application/vnd.jupyter.error']").all_inner_texts()


def test_quickstart_runs_in_jupyterlab_without_errors_and_shows_its_figure(browser, lab):
    page = open_and_run_all(browser, lab, "00_quickstart.ipynb", timeout_s=300)
    assert error_outputs(page) == []
    figures = page.locator(f"{PANEL} .jp-RenderedImage img")
    assert figures.count() >= 1
    assert page.evaluate("img => img.naturalWidth > 100 && img.naturalHeight > 100", figures.first.element_handle())
    page.close()


def test_the_defense_explorer_redraws_its_figure_when_the_dropdown_changes(browser, lab):
    page = open_and_run_all(browser, lab, "03_inversion.ipynb", timeout_s=600)
    assert error_outputs(page) == []
    cell = page.locator(f"{PANEL} .jp-CodeCell", has=page.locator(".widget-dropdown"))
    cell.scroll_into_view_if_needed(timeout=30_000)
    select = cell.locator(".widget-dropdown select").first
    select.wait_for(timeout=30_000)
    before = cell.locator(".jp-RenderedImage img").first.get_attribute("src")
    assert before and len(select.locator("option").all_inner_texts()) >= 2
    select.select_option(index=1)
    # the display handle replaces the figure's <img> element: look it up afresh until its image differs
    page.wait_for_function("([cell, old]) => { const img = cell.querySelector('.jp-RenderedImage img');"
                           " return img !== null && img.getAttribute('src') !== old; }",
                           arg=[cell.element_handle(), before], timeout=60_000)
    assert error_outputs(page) == []
    page.close()
