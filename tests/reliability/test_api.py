"""A1111's HTTP API (--api) on the real server, driven by real clients: requests and webuiapi."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests
import torch
from PIL import Image

from ti.embedding import Embedding
from ti.formats import save_embedding_file
from ti.infotext import parse_infotext


def _wait_for_api(url: str) -> None:
    """The page answers first; the API routes join a moment later (added once the server runs)."""
    import time

    deadline = time.time() + 60
    while requests.get(f"{url}internal/ping", timeout=10).status_code != 200:
        assert time.time() < deadline, "the API routes never appeared"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def api_studio(tmp_path_factory, app_launcher):
    root = tmp_path_factory.mktemp("api-studio")
    (root / "embeddings").mkdir()
    save_embedding_file(Embedding("apistyle", torch.randn(2, 32) * 0.02, step=4), root / "embeddings" / "apistyle.pt")
    save_embedding_file(Embedding("sd1style", torch.randn(1, 768), step=9), root / "embeddings" / "sd1style.pt")
    with app_launcher(root, "--api") as running:
        _wait_for_api(running[0])
        yield running


@pytest.fixture(scope="module")
def api(api_studio):
    url, _, _ = api_studio
    return url + "sdapi/v1"


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_with_an_embedding_from_the_folder_answers_as_a1111(api):
    reply = requests.post(f"{api}/txt2img", json={"prompt": "a photo of apistyle", "width": 64, "height": 64,
                                                  "steps": 2, "seed": 5, "batch_size": 2, "unknown_key": 1}, timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and info["all_seeds"] == [5, 6]
    assert info["sampler_name"] == "Euler" and info["steps"] == 2  # no sampler given: A1111's Euler
    picture = _image(body["images"][0])
    assert picture.size == (64, 64)
    prompt, _, params = parse_infotext(picture.info["parameters"])
    assert prompt == "a photo of apistyle" and "apistyle" in params["TI hashes"]
    assert info["infotexts"][0] == picture.info["parameters"]
    assert body["parameters"]["prompt"] == "a photo of apistyle"


@pytest.mark.parametrize("field, value", [("enable_hr", True), ("restore_faces", True), ("tiling", True),
                                          ("subseed_strength", 0.5), ("script_name", "x/y/z plot"),
                                          ("sampler_name", "Restart")])
def test_what_we_do_not_have_is_refused_by_name_in_a1111s_shape(api, field, value):
    reply = requests.post(f"{api}/txt2img", json={"prompt": "x", field: value, "steps": 1}, timeout=60)
    assert reply.status_code == 422
    body = reply.json()
    assert set(body) == {"error", "detail", "body", "errors"} and body["detail"].startswith(f"{field}: ")


def test_a_malformed_request_is_fastapis_422(api):
    reply = requests.post(f"{api}/txt2img", json={"steps": "many"}, timeout=30)
    assert reply.status_code == 422 and "detail" in reply.json()


def test_png_info_round_trip(api):
    body = requests.post(f"{api}/txt2img", json={"prompt": "a tree", "negative_prompt": "blurry", "width": 64,
                                                 "height": 64, "steps": 1, "seed": 9}, timeout=120).json()
    reply = requests.post(f"{api}/png-info", json={"image": "data:image/png;base64," + body["images"][0]}, timeout=30)
    info = reply.json()
    assert info["info"] == json.loads(body["info"])["infotexts"][0]
    assert info["parameters"]["Prompt"] == "a tree" and info["parameters"]["Negative prompt"] == "blurry"
    assert info["parameters"]["Seed"] == "9" and (info["parameters"]["Size-1"], info["parameters"]["Size-2"]) == ("64", "64")


def test_lists_options_and_flags(api):
    assert {s["name"] for s in requests.get(f"{api}/samplers", timeout=30).json()} >= {"Euler a", "DPM++ 2M"}
    assert "karras" in {s["name"] for s in requests.get(f"{api}/schedulers", timeout=30).json()}
    models = requests.get(f"{api}/sd-models", timeout=30).json()
    assert models[0]["model_name"] == "demo"
    options = requests.get(f"{api}/options", timeout=30).json()
    assert options["sd_model_checkpoint"].startswith("demo [")
    assert requests.post(f"{api}/options", json=options, timeout=60).status_code == 200  # Open WebUI posts it back
    assert requests.post(f"{api}/options", json={"sd_model_checkpoint": "nope"}, timeout=30).status_code == 500
    embeddings = requests.get(f"{api}/embeddings", timeout=30).json()
    assert embeddings["loaded"]["apistyle"] == {"step": 4, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                "shape": 32, "vectors": 2}
    assert embeddings["skipped"] == {"sd1style": {"step": 9, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                  "shape": 768, "vectors": 1}}  # readable, wrong width: as A1111
    assert requests.get(f"{api}/scripts", timeout=30).json() == {"txt2img": [], "img2img": []}
    assert requests.post(f"{api}/options", json={"CLIP_stop_at_last_layers": 2}, timeout=30).status_code == 200
    assert requests.get(f"{api}/options", timeout=30).json()["CLIP_stop_at_last_layers"] == 2
    body = requests.post(f"{api}/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1}, timeout=60).json()
    assert "Clip skip: 2" in json.loads(body["info"])["infotexts"][0]
    assert requests.post(f"{api}/options", json={"CLIP_stop_at_last_layers": 1}, timeout=30).status_code == 200
    assert requests.post(f"{api}/options", json={"CLIP_stop_at_last_layers": 40}, timeout=30).status_code == 422
    progress = requests.get(f"{api}/progress", timeout=30).json()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    assert requests.post(f"{api}/interrupt", timeout=30).json() == {}
    assert "port" in requests.get(f"{api}/cmd-flags", timeout=30).json()


def test_the_webuiapi_package_works_unchanged(api_studio):
    import webuiapi

    _, _, port = api_studio
    client = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    result = client.txt2img(prompt="a photo of apistyle", width=64, height=64, steps=2, seed=3, sampler_name="Euler a")
    assert result.image.size == (64, 64) and result.info["all_seeds"] == [3]
    assert "Sampler: Euler a" in result.info["infotexts"][0]
    assert any(model["model_name"] == "demo" for model in client.get_sd_models())
    assert client.util_get_current_model().startswith("demo")
    assert client.png_info(result.image).info.startswith("a photo of apistyle")


@pytest.fixture(scope="module")
def locked_api(tmp_path_factory, app_launcher):
    with app_launcher(tmp_path_factory.mktemp("api-auth"), "--api", "--api-auth", "robot:s3cret",
                      "--cors-allow-origins", "http://trusted.example") as running:
        _wait_for_api(running[0])
        yield running


def test_api_auth_refuses_without_the_login_and_hides_it_in_cmd_flags(locked_api):
    url, _, _ = locked_api
    assert requests.get(f"{url}sdapi/v1/options", timeout=30).status_code == 401
    assert requests.get(f"{url}sdapi/v1/options", auth=("robot", "wrong"), timeout=30).status_code == 401
    flags = requests.get(f"{url}sdapi/v1/cmd-flags", auth=("robot", "s3cret"), timeout=30).json()
    assert flags["api_auth"] == "robot:***" and "s3cret" not in json.dumps(flags)


def test_cors_only_for_the_origins_asked_for(locked_api, api):
    url, _, _ = locked_api
    preflight = {"Origin": "http://trusted.example", "Access-Control-Request-Method": "POST"}
    allowed = requests.options(f"{url}sdapi/v1/txt2img", headers=preflight, timeout=30)
    assert allowed.headers.get("access-control-allow-origin") == "http://trusted.example"
    other = requests.options(f"{url}sdapi/v1/txt2img", headers={**preflight, "Origin": "http://evil.example"},
                             timeout=30)
    assert "access-control-allow-origin" not in other.headers
    default = requests.options(f"{api}/txt2img", headers={**preflight, "Origin": "http://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in default.headers  # no --cors-allow-origins: none for others


def test_without_api_there_are_no_api_routes(app_launcher, tmp_path):
    with app_launcher(tmp_path) as (url, _, _):
        assert requests.get(f"{url}sdapi/v1/options", timeout=30).status_code == 404


def test_with_only_a_page_login_the_api_asks_for_the_same_login():
    from test_app_server import load_app_module

    app = load_app_module()
    assert app.api_credentials(app.parse_args(["--api", "--gradio-auth", "ann:pw"])) == [("ann", "pw")]
    assert app.api_credentials(app.parse_args(["--api", "--gradio-auth", "ann:pw", "--api-auth", "bot:k"])) == [("bot", "k")]
    assert app.api_credentials(app.parse_args(["--api"])) is None
    with pytest.raises(SystemExit, match="--api-auth: expected user:password"):
        app.api_credentials(app.parse_args(["--api", "--api-auth", "bot"]))


def test_interrupt_from_the_api_stops_its_generation_and_progress_shows_it_running(api):
    import threading
    import time

    replies = []
    worker = threading.Thread(target=lambda: replies.append(requests.post(
        f"{api}/txt2img", json={"prompt": "a tree", "width": 64, "height": 64, "steps": 150, "n_iter": 20},
        timeout=300)))
    worker.start()
    deadline = time.time() + 60
    while (state := requests.get(f"{api}/progress", timeout=30).json())["state"]["job_count"] == 0:
        assert time.time() < deadline and worker.is_alive(), "the generation never showed in progress"
        time.sleep(0.05)
    assert state["state"]["job"] == "txt2img" and 0 < state["progress"] <= 1
    deadline = time.time() + 60
    while (current := requests.get(f"{api}/progress", timeout=30).json()["current_image"]) is None:
        assert time.time() < deadline, "no live preview"
        time.sleep(0.05)
    assert _image(current).size == (8, 8)  # A1111's Approx cheap: one pixel per latent
    requests.post(f"{api}/interrupt", timeout=30)
    worker.join(120)
    info = json.loads(replies[0].json()["info"])
    assert len(info["all_seeds"]) < 20 and "Interrupted: at step" in info["infotexts"][-1]


def _dataset(folder):
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{index:05d}-0-a red car.png")
    return folder


def test_create_train_with_progress_and_interrupt_through_the_api(api, api_studio):
    import threading
    import time

    from ti.formats import load_embedding_file

    _, folders, _ = api_studio
    data = _dataset(folders["logs"].parent / "api-data")
    created = requests.post(f"{api}/create/embedding", json={"name": "apitrained", "num_vectors_per_token": 2,
                                                             "init_text": "cat"}, timeout=60).json()
    assert created["info"] == f"create embedding filename: {folders['embeddings'] / 'apitrained.pt'}"
    again = requests.post(f"{api}/create/embedding", json={"name": "apitrained"}, timeout=60).json()
    assert again["info"].startswith("create embedding error: ")
    hypernetwork = requests.post(f"{api}/create/hypernetwork", json={"name": "apihn", "enable_sizes": [32],
                                                                     "layer_structure": "1, 2, 1"}, timeout=60).json()
    assert hypernetwork["info"] == f"create hypernetwork filename: {folders['hypernetworks'] / 'apihn.pt'}"

    body = {"embedding_name": "apitrained", "learn_rate": "0.005", "batch_size": 1, "gradient_step": 1,
            "data_root": str(data), "log_directory": str(folders["logs"]), "training_width": 64,
            "training_height": 64, "varsize": False, "steps": 3, "clip_grad_mode": "disabled",
            "clip_grad_value": "0.1", "shuffle_tags": False, "tag_drop_out": 0, "latent_sampling_method": "once",
            "use_weight": False, "create_image_every": 0, "save_embedding_every": 0,
            "template_filename": "style_filewords.txt", "save_image_with_stored_embedding": False,
            "preview_from_txt2img": False, "preview_prompt": "", "preview_negative_prompt": "", "preview_steps": 20,
            "preview_sampler_name": "Euler a", "preview_cfg_scale": 7, "preview_seed": -1, "preview_width": 64,
            "preview_height": 64}
    done = requests.post(f"{api}/train/embedding", json=body, timeout=300).json()
    assert done["info"] == (f"train embedding complete: filename: {folders['embeddings'] / 'apitrained.pt'} "
                            "error: None")
    assert load_embedding_file(folders["embeddings"] / "apitrained.pt").step == 3

    replies = []
    worker = threading.Thread(target=lambda: replies.append(
        requests.post(f"{api}/train/embedding", json={**body, "steps": 100000, "create_image_every": 2,
                                                     "preview_steps": 1}, timeout=300).json()))
    worker.start()
    deadline = time.time() + 120
    while (state := requests.get(f"{api}/progress", timeout=30).json())["state"]["job_no"] < 5 \
            or state["current_image"] is None:
        assert time.time() < deadline and worker.is_alive(), state
        time.sleep(0.1)
    assert state["state"]["job"] == "train-embedding" and state["state"]["job_count"] == 100000
    assert _image(state["current_image"]).size == (64, 64)  # its latest preview
    requests.post(f"{api}/interrupt", timeout=30)
    worker.join(120)
    assert replies[0]["info"].endswith("error: None")
    step = load_embedding_file(folders["embeddings"] / "apitrained.pt").step
    assert 5 <= step < 100000  # stopped, and what it trained was saved
    bad = requests.post(f"{api}/train/embedding", json={**body, "steps": -1}, timeout=60).json()
    assert bad["info"].startswith("train embedding complete: filename:  error: ")


def test_switching_the_model_through_options(api, api_studio, tiny_pipe):
    _, folders, _ = api_studio
    tiny_pipe.save_pretrained(folders["models"] / "tiny-sd")
    titles = {entry["model_name"]: entry for entry in requests.get(f"{api}/sd-models", timeout=30).json()}
    assert "tiny-sd" in titles and titles["tiny-sd"]["hash"] is None  # not hashed inside a GET
    assert requests.post(f"{api}/options", json={"sd_model_checkpoint": "tiny-sd"}, timeout=300).status_code == 200
    options = requests.get(f"{api}/options", timeout=30).json()
    assert options["sd_model_checkpoint"].startswith("tiny-sd [") and len(options["sd_checkpoint_hash"]) == 64
    body = requests.post(f"{api}/txt2img", json={"prompt": "a tree", "width": 64, "height": 64, "steps": 1},
                         timeout=120).json()
    assert json.loads(body["info"])["sd_model_name"] == "tiny-sd"
    assert requests.post(f"{api}/options", json={"sd_model_checkpoint": "demo"}, timeout=300).status_code == 200
    assert requests.get(f"{api}/options", timeout=30).json()["sd_model_checkpoint"].startswith("demo [")


def test_docs_list_the_routes(api_studio):
    url, _, _ = api_studio
    assert requests.get(f"{url}docs", timeout=30).status_code == 200
    paths = requests.get(f"{url}openapi.json", timeout=30).json()["paths"]
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/png-info", "/sdapi/v1/train/embedding"} <= set(paths)


def test_an_api_call_and_a_page_generation_at_once_keep_their_own_results(ui):
    """In-process: the page's txt2img callback and the API's txt2img on the same services, run
    together; each picture equals the one made alone (same prompt and seed), nothing mixed."""
    import threading

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ui.api import build_api_router

    app = FastAPI()
    app.include_router(build_api_router(ui.services, None, {}))
    client = TestClient(app)
    api_body = {"prompt": "a blue house", "width": 64, "height": 64, "steps": 3, "seed": 21, "sampler_name": "Euler a"}
    page_values = dict(txt2img_prompt="a red tree", txt2img_steps=3, txt2img_seed=22, txt2img_width=64,
                       txt2img_height=64)

    def api_picture():
        return _image(client.post("/sdapi/v1/txt2img", json=api_body).json()["images"][0]).convert("RGB").tobytes()

    def page_picture():
        gallery = ui.call("on_generate", **page_values)[0]
        return Image.open(gallery[0][0]).convert("RGB").tobytes()

    alone = {"api": api_picture(), "page": page_picture()}
    together = {}
    threads = [threading.Thread(target=lambda: together.__setitem__("api", api_picture())),
               threading.Thread(target=lambda: together.__setitem__("page", page_picture()))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert together == alone and alone["api"] != alone["page"]
