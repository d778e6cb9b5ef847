"""The Preprocess tab's callbacks without a browser: widget values -> config, job start, polling."""

import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from ti.errors import ConfigError
from ti.preprocess import PreprocessResult, SkippedFile
from ui.jobs import JobRunner, JobSnapshot
from ui.services import AppPaths
from ui.tab_preprocess import CONFIG_FIELDS, DEFAULTS, config_from_values, interrupt, poll, progress_text, start_preprocess


def values(source, destination, **changes):
    """What the widgets send by default (sliders give floats), with some fields changed."""
    result = dict(DEFAULTS, source=str(source), destination=str(destination), width=512.0, height=512.0)
    result.update(changes)
    return result


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    Image.new("RGB", (96, 64), "red").save(folder / "a.png")
    (folder / "b.png").write_bytes(b"junk")
    return folder


def test_every_config_field_has_a_widget_default():
    assert set(CONFIG_FIELDS) == set(DEFAULTS)


def test_config_from_values_maps_and_cleans(tmp_path):
    config = config_from_values(values(f"  {tmp_path / 'raw'} ", tmp_path / "out", width=64.0, flip=True,
                                       auto_crop_min_area=4096.0, auto_crop_objective="min-error"))
    assert config.source == tmp_path / "raw" and config.destination == tmp_path / "out"
    assert config.width == 64 and isinstance(config.width, int) and config.flip
    assert config.auto_crop_min_area == 4096 and config.auto_crop_objective == "min-error"


@pytest.mark.parametrize("changes, field", [
    ({"width": 100.0}, "width"),
    ({"auto_crop_min_area": None}, "auto crop min area"),
    ({"caption": True, "caption_model": "  "}, "caption model"),
    ({"auto_crop_objective": "biggest"}, "auto crop objective"),
])
def test_bad_values_name_the_field(tmp_path, changes, field):
    with pytest.raises(ConfigError, match=field):
        config_from_values(values(tmp_path / "raw", tmp_path / "out", **changes))


def test_refusals_start_nothing(source):
    services = SimpleNamespace(jobs=JobRunner(), paths=AppPaths())
    with pytest.raises(gr.Error, match="destination"):
        start_preprocess(services, values(source, source / "out"))
    with pytest.raises(gr.Error, match="source"):
        start_preprocess(services, values(source.parent / "missing", source.parent / "out"))
    assert services.jobs.snapshot().kind == "" and not (source / "out").exists()


def test_busy_runner_shows_the_job_busy_message(source):
    services = SimpleNamespace(jobs=JobRunner(), paths=AppPaths())
    release = threading.Event()
    services.jobs.start("train-embedding", "Training cat", lambda progress: (release.wait(10), progress.should_stop())[1])
    try:
        with pytest.raises(gr.Error, match="Training cat is still running"):
            start_preprocess(services, values(source, source.parent / "out"))
        interrupt(services)  # not a preprocess job: left alone
    finally:
        release.set()
    assert services.jobs.wait(10).result is False


def test_run_then_poll_shows_summary_skipped_and_gallery(source):
    services = SimpleNamespace(jobs=JobRunner(), paths=AppPaths())
    assert start_preprocess(services, values(source, source.parent / "out", width=64.0, height=64.0, flip=True)) == "Starting…"
    services.jobs.wait(30)
    line, summary, gallery, timer = poll(services)
    assert line == "Done."
    assert "2 of 2 files: wrote 2 pictures" in summary and "`b.png`" in summary and "not a readable picture" in summary
    assert [name for _, name in gallery] == ["00000-0-a.png", "00000-1-a.png"]
    assert isinstance(timer, gr.Timer)


def test_progress_text():
    assert progress_text(JobSnapshot(kind="preprocess", running=True, step=12, total=40, message="cat.jpg")) == "12/40 images · cat.jpg"
    assert progress_text(JobSnapshot(kind="preprocess", running=True)) == "Starting…"
    assert progress_text(JobSnapshot(kind="preprocess", error="boom")) == "⚠ boom"
    cancelled = PreprocessResult(cancelled=True, skipped=[SkippedFile(Path("x.png"), "bad")])
    assert progress_text(JobSnapshot(kind="preprocess", result=cancelled)) == "Interrupted."
