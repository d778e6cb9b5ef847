"""The job runner's progress: time left from the measured rate, right after a resume too."""

import time

from ui.jobs import JobRunner, JobSnapshot


def test_eta_is_seconds_per_step_times_steps_left_after_a_resume_at_step_5000():
    # The run started 10 s ago from a file at step 5000 and is at 5010: 1 s a step, 990 to go.
    # (step / elapsed would say 0.002 s a step and a few seconds left.)
    snapshot = JobSnapshot(kind="train-embedding", running=True, step=5010, total=6000,
                           started_at=time.time() - 10, details={"seconds_per_step": 1.0})
    assert snapshot.eta_seconds == 990.0


def test_without_a_measured_rate_eta_counts_from_the_first_step_reported():
    snapshot = JobSnapshot(kind="train-embedding", running=True, step=5010, total=6000, started_at=time.time() - 60,
                           first_step=5000, first_step_at=time.time() - 10)
    assert 980 <= snapshot.eta_seconds <= 1000


def test_the_runner_records_the_first_step_a_job_reports():
    runner = JobRunner()

    def work(progress):
        progress.update(total=6000)
        progress.update(step=5001)
        while not progress.should_stop():
            time.sleep(0.01)

    runner.start("train-embedding", "t", work)
    while runner.snapshot().step != 5001:
        time.sleep(0.01)
    snapshot = runner.snapshot()
    assert snapshot.first_step == 5001 and snapshot.total == 6000
    assert snapshot.eta_seconds is None  # one step seen, no rate yet: no guess
    runner.stop()
    runner.wait(5)


def test_a_long_loss_history_is_averaged_down_to_a_few_hundred_points():
    from ui.train_widgets import MAX_PLOT_POINTS, downsample_history, loss_frame

    history = [(step, float(step % 2)) for step in range(1, 100_001)]
    points = downsample_history(history)
    assert len(points) <= MAX_PLOT_POINTS
    assert points[-1][0] == 100_000 and points[0][0] == 100_000 // len(points)
    assert all(abs(loss - 0.5) < 1e-9 for _, loss in points)  # each bucket's mean
    assert len(loss_frame(history)) == len(points)
    short = history[:10]
    assert downsample_history(short) == short
