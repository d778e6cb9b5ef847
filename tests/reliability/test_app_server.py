"""The web app as users run it (app.py in a subprocess, demo model): loopback only unless
--listen, --gradio-auth enforced, hostile files dropped in while it runs, and two browser tabs at
once (generate in one while training runs in the other) without mixing results."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

import reliability_kit as kit

USER, PASSWORD = "alice", "correct horse"


def load_app_module():
    spec = importlib.util.spec_from_file_location("ti_studio_app", kit.REPO_ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_server_options_loopback_unless_listen():
    app = load_app_module()
    assert app.server_options(app.parse_args([])) == {"server_name": "127.0.0.1", "server_port": 7860, "auth": None}
    listening = app.server_options(app.parse_args(["--listen", "--port", "9000", "--gradio-auth", "a:b,c:d"]))
    assert listening == {"server_name": "0.0.0.0", "server_port": 9000, "auth": [("a", "b"), ("c", "d")]}
    for bad in ("alice", "alice:", ":pw", "a:b,,"):
        with pytest.raises(SystemExit, match="--gradio-auth: expected user:password"):
            app.server_options(app.parse_args(["--gradio-auth", bad]))


@pytest.fixture(scope="module")
def auth_studio(tmp_path_factory, app_launcher):
    """app.py with --gradio-auth on a free port; yields (url, folders, port)."""
    with app_launcher(tmp_path_factory.mktemp("auth-studio"), "--gradio-auth", f"{USER}:{PASSWORD}") as running:
        yield running


def listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets LISTENing on `port`, from /proc/net/tcp{,6} (hex, as the kernel lists them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.add(address)
    return found


def test_binds_loopback_only(auth_studio):
    _, _, port = auth_studio
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp on this system")
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and no 0.0.0.0 / :: socket


def status_of(request: urllib.request.Request | str, cookie: str | None = None) -> int:
    if isinstance(request, str):
        request = urllib.request.Request(request)
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def login(url: str, password: str) -> tuple[int, str]:
    body = urllib.parse.urlencode({"username": USER, "password": password}).encode()
    request = urllib.request.Request(url + "login", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            cookies = response.headers.get_all("Set-Cookie") or []
            return response.status, "; ".join(cookie.split(";", 1)[0] for cookie in cookies)
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_unauthenticated_requests_are_refused_and_login_works(auth_studio):
    url, _, _ = auth_studio
    generate = urllib.request.Request(url + "gradio_api/call/on_generate", data=b'{"data": []}', method="POST",
                                      headers={"Content-Type": "application/json"})
    assert status_of(url + "config") == 401
    assert status_of(url + "gradio_api/info") == 401
    assert status_of(generate) == 401
    assert login(url, "wrong")[0] == 400
    status, cookie = login(url, PASSWORD)
    assert status == 200 and cookie
    assert status_of(url + "config", cookie) == 200


def set_number(page, selector: str, value) -> None:
    box = page.locator(selector).first
    box.fill(str(value))
    box.press("Tab")


def generate_fixed_seed(page, outputs: Path) -> Path:
    before = set(outputs.rglob("*.png"))
    page.locator("#txt2img_prompt textarea").fill("a photo of good, a tree")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_number(page, f"#{elem_id} input[type=number]", value)
    page.locator("#txt2img_seed input").fill("4242")
    page.locator("#txt2img_generate").click()
    deadline = time.time() + 120
    while not (new := set(outputs.rglob("*.png")) - before):
        assert time.time() < deadline, "no picture was generated"
        time.sleep(0.1)
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 4242')")
    time.sleep(0.2)  # the PNG is renamed into place whole; let the page settle
    return new.pop()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


@pytest.mark.browser
def test_two_tabs_generate_while_training_after_hostile_files_dropped_in(auth_studio, browser, tmp_path):
    url, folders, _ = auth_studio
    marker = tmp_path / "MARKER-code-ran"
    # Dropped in while the app runs: hostile pickles, damaged files, a non-UTF-8 name; one good embedding.
    for hostile in kit.hostile_files(marker):
        (folders["embeddings"] / hostile.file_name).write_bytes(hostile.data)
        (folders["hypernetworks"] / hostile.file_name).write_bytes(hostile.data)
    downloads = folders["embeddings"] / "downloads"  # a subfolder: the library scans it, the Train tab does not
    downloads.mkdir()
    for entry in kit.corrupt_entries(32):
        if entry.relative in ("zlib-bomb.png", "oversized-chunk.png") or entry.data is None:
            continue  # covered in test_corrupt_input; keep the page's refresh quick
        kit.write_entry(downloads, entry)
    (folders["embeddings"] / "good.pt").write_bytes(kit.good_pt(32))
    (folders["embeddings"] / "tok.pt").write_bytes(kit.good_pt(32, name="tok"))
    data = kit.write_dataset(tmp_path / "data")

    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    try:
        context.set_default_timeout(60_000)
        assert context.request.post(url + "login", form={"username": USER, "password": PASSWORD}).ok
        generating, training = context.new_page(), context.new_page()
        for page in (generating, training):
            page.goto(url)
            page.wait_for_selector("#txt2img_prompt textarea")

        # Tab 1: the hostile files are listed as skipped, and generation works.
        generating.get_by_text("Refresh embeddings").click()
        generating.wait_for_function("document.querySelector('#embeddings_list').innerText.includes('refused: it names')")
        listing = generating.locator("#embeddings_list").inner_text()
        assert "good" in listing and "not valid UTF-8" in listing and "pickle" not in listing.split("Skipped")[0]
        alone = generate_fixed_seed(generating, folders["outputs"])

        # Tab 2: a bad value is refused with a toast naming the field; then a long run starts.
        training.get_by_role("tab", name="Train embedding").click()
        training.locator("#train_refresh").click()
        training.locator("#train_embedding input").click()
        training.get_by_role("option", name="tok", exact=True).click()
        training.locator("#train_data_dir textarea, #train_data_dir input").first.fill(str(data))
        for elem_id in ("train_width", "train_height"):
            set_number(training, f"#{elem_id} input[type=number]", 64)
        set_number(training, "#train_preview_every input", 0)
        set_number(training, "#train_save_every input", 2)
        set_number(training, "#train_max_steps input", -5)
        training.locator("#train_start").click()
        training.get_by_text("Max steps: must be 1 or more, got -5").first.wait_for()
        set_number(training, "#train_max_steps input", 100000)
        training.locator("#train_start").click()
        training.wait_for_function("/step [1-9][0-9]*\\/100000/.test(document.querySelector('#train_status').innerText)",
                                   timeout=120_000)

        # Tab 1 again, while tab 2 trains: the same seed gives the same picture.
        during = generate_fixed_seed(generating, folders["outputs"])
        assert "/100000" in training.locator("#train_status").inner_text(), "training ended before the generation"
        assert np.array_equal(pixels(alone), pixels(during))

        # Interrupt in tab 2: saved and resumable; Train again continues to its max steps.
        training.locator("#train_interrupt").click()
        training.wait_for_function("document.querySelector('#train_status').innerText.includes('interrupted at step')",
                                   timeout=60_000)
        stopped_at = int(re.search(r"interrupted at step (\d+)", training.locator("#train_status").inner_text()).group(1))
        assert kit.embedding_step(folders["embeddings"] / "tok.pt") == stopped_at
        set_number(training, "#train_max_steps input", stopped_at + 2)
        training.locator("#train_start").click()
        training.wait_for_function(f"document.querySelector('#train_status').innerText.includes('finished at step {stopped_at + 2}')",
                                   timeout=120_000)
        assert kit.embedding_step(folders["embeddings"] / "tok.pt") == stopped_at + 2
    finally:
        context.close()
    assert not marker.exists(), "code from a hostile file ran"
    corrupt, _ = kit.check_saved_files(folders["embeddings"] / "never", folders["logs"])
    assert corrupt == []


def test_page_outputs_stay_json_safe_with_non_utf8_file_names(ui):
    """A file name from another system (latin-1 bytes) must not reach the page as lone surrogates:
    Gradio's JSON encoder refuses them and the request never completes (the page hangs)."""
    services = ui.services
    odd = os.fsdecode(b"caf\xe9")
    (services.paths.embeddings_dir / f"{odd}.pt").write_bytes(kit.good_pt(32))
    (services.paths.embeddings_dir / f"{odd}-junk.pt").write_bytes(b"junk")
    (services.paths.hypernetwork_dir / f"{odd}.pt").write_bytes(b"junk")
    (services.paths.models_dir / f"{odd}.safetensors").write_bytes(b"junk")
    outputs = [ui.call("build_txt2img_tab.<locals>.on_refresh"), services.hypernetwork_names(), services.model_choices(),
               ui.call("build_model_bar.<locals>.on_refresh")["choices"]]
    orjson.dumps(outputs, default=str)  # what Gradio sends; raises on a lone surrogate
    assert "caf\ufffd.pt" in outputs[0] and "not valid UTF-8" in outputs[0]


def test_train_tab_embedding_list_is_json_safe(ui):
    from ui.tab_train import embedding_names

    (ui.services.paths.embeddings_dir / os.fsdecode(b"caf\xe9.pt")).write_bytes(kit.good_pt(32))
    orjson.dumps(embedding_names(ui.services))
