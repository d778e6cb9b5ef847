"""One background job at a time (training, preprocessing), with progress snapshots and a stop flag.

The page polls `snapshot()` on a timer, so it stays responsive while the job runs in a thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ti.errors import TIError

log = logging.getLogger(__name__)


class StopToken:
    """Set by the UI's Interrupt button; the job checks it at step boundaries."""

    def __init__(self):
        self._event = threading.Event()

    def stop(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


@dataclass
class JobSnapshot:
    kind: str = ""  # "train-embedding", "preprocess", … ("" when no job ran yet)
    title: str = ""
    running: bool = False
    step: int = 0
    total: int = 0
    message: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""
    result: Any = None
    # Free-form extras a job reports (loss history, latest preview path…).
    details: dict = field(default_factory=dict)

    # The first step reported and when: a resumed run starts at its saved step (5000, say), so
    # the rate is (steps since then) / (time since then), never step / elapsed.
    first_step: int | None = None
    first_step_at: float = 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds per step × steps left: the job's own measure (details["seconds_per_step"],
        which the training loop averages over its last steps) or, without one, the rate since
        the first step reported."""
        if not self.running or self.total <= 0:
            return None
        left = max(self.total - self.step, 0)
        per_step = self.details.get("seconds_per_step")
        if per_step is None and self.first_step is not None and self.step > self.first_step:
            per_step = (time.time() - self.first_step_at) / (self.step - self.first_step)
        return None if per_step is None else per_step * left


class JobBusy(TIError):
    pass


class JobProgress:
    """Handed to a job function: report progress, read the stop flag."""

    def __init__(self, runner: "JobRunner", stop: StopToken):
        self._runner = runner
        self.should_stop = stop

    def update(self, step: int | None = None, total: int | None = None, message: str | None = None, **details) -> None:
        self._runner._update(step=step, total=total, message=message, details=details)


class JobRunner:
    def __init__(self):
        self._lock = threading.Lock()
        self._snapshot = JobSnapshot()
        self._stop: StopToken | None = None
        self._thread: threading.Thread | None = None

    def start(self, kind: str, title: str, work: Callable[[JobProgress], Any]) -> None:
        """Run work(progress) in a thread. Raises JobBusy if a job is running."""
        with self._lock:
            if self._snapshot.running:
                raise JobBusy(f"{self._snapshot.title} is still running; interrupt it or wait until it ends")
            self._stop = StopToken()
            self._snapshot = JobSnapshot(kind=kind, title=title, running=True, started_at=time.time())
            progress = JobProgress(self, self._stop)
            self._thread = threading.Thread(target=self._run, args=(work, progress), name=f"job-{kind}", daemon=True)
            self._thread.start()

    def _run(self, work: Callable[[JobProgress], Any], progress: JobProgress) -> None:
        result, error = None, ""
        try:
            result = work(progress)
        except TIError as exc:
            error = str(exc)
        except Exception as exc:  # shown in the page; the traceback goes to the log
            log.error("job failed:\n%s", traceback.format_exc())
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._snapshot = replace(self._snapshot, running=False, finished_at=time.time(), result=result, error=error)

    def _update(self, step, total, message, details) -> None:
        with self._lock:
            snap = self._snapshot
            merged = dict(snap.details)
            merged.update(details)
            first_step, first_step_at = snap.first_step, snap.first_step_at
            if step is not None and first_step is None:
                first_step, first_step_at = step, time.time()
            self._snapshot = replace(
                snap,
                first_step=first_step,
                first_step_at=first_step_at,
                step=snap.step if step is None else step,
                total=snap.total if total is None else total,
                message=snap.message if message is None else message,
                details=merged,
            )

    def stop(self, kind: str | None = None) -> bool:
        """Ask the running job to stop at its next step boundary; False if none runs, or (given
        kind) the one running is of another kind: the Train tab's Interrupt stops training only."""
        with self._lock:
            if not self._snapshot.running or self._stop is None:
                return False
            if kind is not None and self._snapshot.kind != kind:
                return False
            self._stop.stop()
            return True

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return self._snapshot

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        thread = self._thread
        if thread:
            thread.join(timeout)
        return self.snapshot()


class SessionStops:
    """Interrupt flags per browser session: Interrupt in one session stops the work that session
    started and is running now, never another session's, nor work queued after it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, list[StopToken]] = {}

    def start(self, session: str) -> StopToken:
        token = StopToken()
        with self._lock:
            self._running.setdefault(session, []).append(token)
        return token

    def finish(self, session: str, token: StopToken) -> None:
        with self._lock:
            tokens = self._running.get(session, [])
            if token in tokens:
                tokens.remove(token)
            if not tokens:
                self._running.pop(session, None)

    def stop(self, session: str) -> int:
        """Stop the session's running work; how many runs were asked to stop."""
        with self._lock:
            tokens = list(self._running.get(session, []))
        for token in tokens:
            token.stop()
        return len(tokens)

    def running(self, session: str) -> int:
        with self._lock:
            return len(self._running.get(session, []))


def session_of(request) -> str:
    """The browser session of a Gradio request ("" without one, as in direct calls)."""
    return str(getattr(request, "session_hash", None) or "")
