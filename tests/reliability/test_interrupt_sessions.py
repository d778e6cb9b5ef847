"""Interrupt belongs to whoever asked: one browser session's Interrupt never stops another's
generation, and the Train tab's Interrupt stops training only."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace


def _generate_in_thread(ui, session: str, steps: int, results: dict) -> threading.Thread:
    block_fn = ui.function("on_generate")
    values = []
    for component in block_fn.inputs:
        chosen = {"txt2img_prompt": "a tree", "txt2img_width": 64, "txt2img_height": 64, "txt2img_steps": steps,
                  "txt2img_seed": 1}.get(getattr(component, "elem_id", None), component.value)
        values.append(chosen)

    def run():
        results[session] = block_fn.fn(*values, request=SimpleNamespace(session_hash=session))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_running(stops_owner, session: str) -> None:
    deadline = time.monotonic() + 30
    while not stops_owner(session):
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.005)


def test_one_sessions_interrupt_does_not_stop_another_sessions_generation(ui):
    interrupt = ui.function("on_interrupt_generation").fn
    stops = next(cell.cell_contents for cell in interrupt.__closure__ if hasattr(cell.cell_contents, "running"))
    results: dict = {}
    first = _generate_in_thread(ui, "a", 150, results)
    _wait_running(stops.running, "a")
    interrupt(request=SimpleNamespace(session_hash="b"))  # another browser session's button
    first.join(120)
    infotext = results["a"][1]
    assert "Steps: 150," in infotext and "Interrupted" not in infotext

    second = _generate_in_thread(ui, "a", 150, results)
    _wait_running(stops.running, "a")
    interrupt(request=SimpleNamespace(session_hash="a"))  # its own session's button
    second.join(120)
    assert "Interrupted: at step" in results["a"][1]


def test_the_train_tabs_interrupt_does_not_stop_a_preprocess_job(ui):
    interrupt_pressed = threading.Event()

    def preprocess_work(progress):
        interrupt_pressed.wait(30)
        return "stopped" if progress.should_stop() else "done"

    ui.services.jobs.start("preprocess", "Preprocessing", preprocess_work)
    ui.function("on_interrupt_training").fn()
    ui.function("on_interrupt_hypernetwork").fn()
    interrupt_pressed.set()
    assert ui.services.jobs.wait(30).result == "done"
