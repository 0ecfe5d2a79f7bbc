"""The notebooks in a real JupyterLab, driven in headless Chromium by Playwright (marker: browser).

nbval proves cells execute; this proves what a student sees: the feature explorer of notebook 02
renders, its timestep slider and block selector redraw the figure, no cell shows an error, and the
static fallback figure is there.  The server runs on 127.0.0.1 with a token and throw-away
config/runtime/settings/workspace folders, on copies of the notebooks (JupyterLab autosaves).
Skipped, with the reason, when Chromium or Playwright is missing; `.ci/run` installs both.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DHL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--disable-quic"]
IDLE = "Python 3 (ipykernel) | Idle"

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` (.ci/run does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the Python playwright package is not installed")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    work = base / "work"
    (work / "notebooks").mkdir(parents=True)
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, work / "notebooks" / nb.name)
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # every cell stays in the DOM (JupyterLab 4 otherwise unmounts off-screen cells, hiding their prompts)
    tracker = base / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = free_port(), secrets.token_hex(16)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
               DHL_PROFILE="smoke")
    env.pop("MPLBACKEND", None)  # the notebooks draw inline
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"JupyterLab did not start: {(base / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    shots = base / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield {"url": url, "token": token, "browser": browser, "shots": shots}
        finally:
            browser.close()
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
    print(f"screenshots: {shots}")


def _run_all(lab, name: str, timeout_s: float = 300):
    page = lab["browser"].new_page(viewport={"width": 1400, "height": 1000})
    # a workspace of its own, reset: only this notebook opens (not the tabs of earlier tests)
    page.goto(f"{lab['url']}/lab/workspaces/{name.split('.')[0]}/tree/notebooks/{name}?reset&token={lab['token']}")
    page.get_by_text(IDLE).wait_for(timeout=90_000)  # the kernel exists and is idle
    nb = page.locator(".jp-NotebookPanel:visible")
    nb.locator(".jp-Cell").first.wait_for(timeout=60_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    deadline = time.time() + timeout_s
    page.wait_for_timeout(1500)
    quiet = 0  # the kernel flickers to idle between queued cells: require a few quiet seconds in a row
    while time.time() < deadline:
        busy = nb.locator(".jp-InputPrompt", has_text="[*]").count()
        quiet = quiet + 1 if busy == 0 and page.get_by_text(IDLE).count() else 0
        if quiet >= 3:
            break
        page.wait_for_timeout(1000)
    else:
        page.screenshot(path=str(lab["shots"] / f"{name}-timeout.png"), full_page=True)
        pytest.fail(f"{name}: cells still running after {timeout_s} s")
    unrun = nb.locator(".jp-CodeCell .jp-InputPrompt", has_text="[ ]").count()
    errors = nb.locator('[data-mime-type="application/vnd.jupyter.error"]')
    page.screenshot(path=str(lab["shots"] / f"{name}.png"), full_page=True)
    assert errors.count() == 0, f"{name}: error output: {errors.first.inner_text()[:500]}"
    assert unrun == 0, f"{name}: {unrun} cell(s) never ran"
    return page, nb


@pytest.mark.parametrize("name", ["00_data_tour.ipynb", "01_ddpm_pretraining.ipynb", "03_finetuning.ipynb",
                                  "04_ablations.ipynb"])
def test_notebook_runs_to_the_end_in_jupyterlab(lab, name):
    page, nb = _run_all(lab, name)
    assert nb.locator(".jp-OutputArea-output img").count() >= 1, "no figure rendered"
    page.close()


def test_feature_explorer_widget_redraws_on_slider_and_block(lab):
    page, nb = _run_all(lab, "02_features_per_timestep.ipynb")
    widget = nb.locator(".widget-vbox").first
    widget.wait_for(timeout=30_000)
    img = widget.locator(".widget-output img").first
    img.wait_for(timeout=30_000)
    before = img.get_attribute("src")
    readout = widget.locator(".widget-readout").first
    t0 = readout.inner_text()
    handle = widget.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_function("([el, old]) => el.innerText !== old", arg=[readout.element_handle(), t0], timeout=20_000)
    page.wait_for_function("([root, old]) => { const i = root.querySelector('.widget-output img');"
                           " return i && i.getAttribute('src') !== old; }",
                           arg=[widget.element_handle(), before], timeout=60_000)
    after_slider = widget.locator(".widget-output img").first.get_attribute("src")
    assert after_slider != before and readout.inner_text() != t0
    block = widget.locator(".widget-dropdown select").first
    options = block.locator("option").all_inner_texts()
    block.select_option(label=options[1])
    page.wait_for_function("([root, old]) => { const i = root.querySelector('.widget-output img');"
                           " return i && i.getAttribute('src') !== old; }",
                           arg=[widget.element_handle(), after_slider], timeout=60_000)
    page.screenshot(path=str(lab["shots"] / "02_explorer_after_interaction.png"), full_page=True)
    # the static fallback grid: a figure outside any widget, before the explorer
    static = nb.locator(".jp-OutputArea-output:not(.widget-output) > img, .jp-RenderedImage img")
    assert static.count() >= 2
    page.close()
