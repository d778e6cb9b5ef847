"""Browser fixtures: the real app (app.py, demo model) in a subprocess, driven by headless Chromium."""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def studio(tmp_path_factory, app_launcher):
    """The real app (demo model) on a free port with its folders in a temporary place; yields (url, folders)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian chromium is not installed (.ci/run installs it: apt-get install chromium)")
    with app_launcher(tmp_path_factory.mktemp("studio")) as (url, folders, _):
        yield url, folders


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
