"""Shared fixtures: the tiny in-process SD model, offline environment, real files from ../shared."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

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
