"""Browser fixtures: the real app (app.py, demo model) in a subprocess, driven by headless Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    """Start app.py on a free port with its folders in a temporary place; yields (url, folders)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian chromium is not installed (.ci/run installs it: apt-get install chromium)")
    root = tmp_path_factory.mktemp("studio")
    folders = {name: root / name for name in ("embeddings", "models", "hypernetworks", "outputs", "logs", "data")}
    for folder in folders.values():
        folder.mkdir()
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log_path = root / "app.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "app.py"), "--port", str(port), "--model", "demo",
             "--embeddings-dir", str(folders["embeddings"]), "--models-dir", str(folders["models"]),
             "--hypernetwork-dir", str(folders["hypernetworks"]), "--outputs-dir", str(folders["outputs"]),
             "--log-dir", str(folders["logs"])],
            cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"app did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, folders
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def page(browser, studio):
    url, _ = studio
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#txt2img_prompt textarea")
    yield page
    context.close()
