"""Shared fixtures: the tiny in-process SD model, offline environment, real files from ../shared."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import contextlib  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_FILES_DIR = REPO_ROOT.parent / "shared" / "real-files"


@pytest.fixture
def real_files_dir() -> Path:
    """Genuine embedding files from ../shared/real-files (skipped where that folder is absent)."""
    if not REAL_FILES_DIR.is_dir():
        pytest.skip("../shared/real-files is not present")
    return REAL_FILES_DIR


@pytest.fixture(scope="session")
def tiny_pipe():
    """The demo pipeline: 32-wide CLIP, tiny UNet and VAE, fixed seeds. Do not mutate it in tests."""
    from ti.demo import build_demo_pipeline

    return build_demo_pipeline()


@pytest.fixture(scope="session")
def tiny_pipe_768():
    """The same tiny pipeline with a 768-wide text encoder, so SD1 embeddings fit."""
    from ti.demo import build_demo_pipeline

    return build_demo_pipeline(text_width=768)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's, driven by playwright) for every browser test in the run:
    playwright's sync API can run only one instance per process."""
    import os as _os

    if not _os.path.exists(CHROMIUM):
        pytest.fail("Debian chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


APP_FOLDERS = ("embeddings", "models", "hypernetworks", "outputs", "logs", "data")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(root: Path, *extra_args: str):
    """app.py (demo model) on a free port with its folders under root; yields (url, folders, port).

    The app's output goes to root/app.log, quoted when it fails to start; it is stopped on exit.
    """
    folders = {name: root / name for name in APP_FOLDERS}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log_path = root / "app.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "app.py"), "--port", str(port), "--model", "demo", *extra_args,
             "--embeddings-dir", str(folders["embeddings"]), "--models-dir", str(folders["models"]),
             "--hypernetwork-dir", str(folders["hypernetworks"]), "--outputs-dir", str(folders["outputs"]),
             "--log-dir", str(folders["logs"])],
            cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    pytest.fail(f"app did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.3)
        yield url, folders, port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def app_launcher():
    """running_app, for fixtures in any test folder (conftest functions are not importable)."""
    return running_app
