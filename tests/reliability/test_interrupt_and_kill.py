"""Stopping training, politely (the Train tab's Interrupt) or not (kill -9 at random moments and
halfway through saves): no file is ever corrupt, and the next run resumes from the last save.

The 20-trial version is benchmarks/soak_reliability.py; here a few trials keep the suite short.
"""

from __future__ import annotations

import random
import time

import pytest

import reliability_kit as kit
from ti.create import create_embedding

NAME = "tok"
SAVE_EVERY = 1
LONG_RUN = 100_000  # --steps of the runs killed mid-run: they never end on their own


def test_interrupt_from_the_train_tab_saves_and_resumes(ui, tmp_path):
    services = ui.services
    create_embedding(services.model, NAME, "cat", 1, services.paths.embeddings_dir)
    data = kit.write_dataset(tmp_path / "data")
    values = {"train_embedding": NAME, "train_data_dir": str(data), "train_width": 64, "train_height": 64,
              "train_max_steps": 500, "train_save_every": 2, "train_preview_every": 0}
    ui.call("on_start", **values)
    deadline = time.monotonic() + 120
    while services.jobs.snapshot().step < 3:
        assert services.jobs.snapshot().running and time.monotonic() < deadline, services.jobs.snapshot().error
        time.sleep(0.05)
    assert services.jobs.stop()  # what the Interrupt button calls
    snapshot = services.jobs.wait(60)
    result = snapshot.result
    assert not snapshot.running and snapshot.error == "" and result.stop_reason == "interrupted"
    status_text = ui.call("on_tick")[0]
    assert f"interrupted at step {result.step}" in status_text

    embedding_file = services.paths.embeddings_dir / f"{NAME}.pt"
    assert kit.embedding_step(embedding_file) == result.step >= 3
    corrupt, temps = kit.check_saved_files(services.paths.embeddings_dir, services.paths.log_dir)
    assert corrupt == [] and temps == []

    ui.call("on_start", **{**values, "train_max_steps": result.step + 2})  # Train again: it continues
    resumed = services.jobs.wait(120).result
    assert resumed.stop_reason == "finished" and resumed.start_step == result.step
    assert resumed.step == result.step + 2 == kit.embedding_step(embedding_file)


@pytest.fixture(scope="module")
def kill_trials(tmp_path_factory):
    """Three SIGKILLed CLI runs in a row (a random moment, halfway through a log-folder save,
    halfway through the final save), then a run to the end; shared by the checks below."""
    workdir = tmp_path_factory.mktemp("kill-9")
    kit.prepare_training_folder(workdir, NAME)
    rng = random.Random(6)
    embedding_file = workdir / "embeddings" / f"{NAME}.pt"
    trials = [kit.run_kill_trial(workdir, NAME, kind, rng, steps=LONG_RUN, save_every=SAVE_EVERY, max_random_seconds=1.0)
              for kind in ("random", "log-save")]
    trials.append(kit.run_kill_trial(workdir, NAME, "final-save", rng, steps=kit.embedding_step(embedding_file) + 3,
                                     save_every=SAVE_EVERY))
    before_resume = kit.embedding_step(embedding_file)
    target = before_resume + 3
    resumed_from, output = kit.resume_to_the_end(workdir, NAME, target, SAVE_EVERY)
    return workdir, trials, before_resume, resumed_from, output, target


def test_kill_9_never_leaves_a_corrupt_file(kill_trials):
    workdir, trials, _, _, _, _ = kill_trials
    for trial in trials:
        assert trial.corrupt == [], trial
        assert trial.resumed_from == trial.start_step, trial  # each run resumed from what the last one left
        assert trial.resumable_step >= trial.start_step, trial
    # Whether a kill lands before the rename is timing (the soak counts how often it does); that
    # the save-targeted kills came right after a save began is not.
    assert all(trial.killed_after_save_began for trial in trials if trial.kind != "random"), trials
    corrupt, _ = kit.check_saved_files(workdir / "embeddings", workdir / "logs")
    assert corrupt == []


def test_after_kill_9_training_resumes_and_reaches_max_steps(kill_trials):
    workdir, _, before_resume, resumed_from, output, target = kill_trials
    assert resumed_from == before_resume, output
    assert f"finished: {NAME} trained to step {target}" in output
    assert kit.embedding_step(workdir / "embeddings" / f"{NAME}.pt") == target


def test_kill_9_loses_at_most_one_save_interval(kill_trials):
    _, trials, _, _, _, _ = kill_trials
    for trial in trials:
        assert trial.steps_lost <= SAVE_EVERY, trial
