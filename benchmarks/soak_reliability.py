"""Reliability soak (issue #6): hostile files, damaged files, kill -9 during training, a full disk.

    .venv/bin/python benchmarks/soak_reliability.py [--kills 20] [--seed 0] [--keep DIR]

Prints the figures the README's "Reliability" section quotes, and exits 1 if any file ran code,
any file was left corrupt, a damaged file took 5 s or more, or a resume failed. The short
version of each check runs in the test suite (tests/reliability/); the builders are shared
(tests/reliability/reliability_kit.py). A run takes a few minutes on 2 CPU cores.

Kill trials chain: each run starts from what the previous one left in embeddings/<name>.pt, is
killed with SIGKILL, and everything it wrote is loaded back. Kinds, in a shuffled order:
    random      at a uniformly random moment of training (0-3 s after the first step began)
    log-save    as soon as a temp file of a log-folder save appears (the kill lands mid-save)
    final-save  as soon as a temp file appears in embeddings/ (the save runs resume from)
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "reliability")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import reliability_kit as kit  # noqa: E402

NAME = "soak"
WIDTH = 32  # the demo model's text encoder
SAVE_EVERY = 1
LONG_RUN = 100_000


def hostile_section(workdir: Path) -> dict:
    """Every hostile file in embeddings/ and models/hypernetworks/, through the library, the
    hypernetwork library and `info`; plus a check that each payload is live without the guard."""
    import contextlib
    import io

    from ti.cli import main
    from ti.errors import BadEmbeddingFile
    from ti.hypernetwork import HypernetworkLibrary
    from ti.library import EmbeddingLibrary

    marker = workdir / "MARKER-code-ran"
    embeddings, hypernetworks = workdir / "hostile" / "embeddings", workdir / "hostile" / "hypernetworks"
    embeddings.mkdir(parents=True)
    hypernetworks.mkdir(parents=True)
    files = kit.hostile_files(marker)
    live = 0
    for index, hostile in enumerate(files):
        live_marker = workdir / f"live-{index}"
        kit.run_unguarded(next(f.data for f in kit.hostile_files(live_marker) if f.file_name == hostile.file_name))
        time.sleep(0.05)
        live += live_marker.exists()
    for hostile in files:
        (embeddings / hostile.file_name).write_bytes(hostile.data)
        (hypernetworks / hostile.file_name).write_bytes(hostile.data)

    tried = refused = 0
    seconds = []
    snapshot, elapsed = kit.timed(lambda: EmbeddingLibrary(embeddings, expected_width=WIDTH).refresh(force=True))
    reasons = {s.path.name: s.reason for s in snapshot.skipped}
    tried += len(files)
    refused += sum(reasons.get(f.file_name, "").startswith("refused") for f in files)
    seconds.append(elapsed / len(files))
    library = HypernetworkLibrary(hypernetworks)
    for hostile in files:
        if not hostile.file_name.endswith(".pt"):
            continue  # the hypernetwork folder only reads .pt
        outcome, elapsed = kit.timed(library.load, hostile.file_name[:-3])
        tried += 1
        refused += isinstance(outcome, BadEmbeddingFile) and outcome.reason.startswith("refused")
        seconds.append(elapsed)
    sink = io.StringIO()
    for folder in (embeddings, hypernetworks):
        for hostile in files:
            with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
                status, elapsed = kit.timed(main, ["info", str(folder / hostile.file_name)])
            tried += 1
            refused += status == 2
            seconds.append(elapsed)
    return {"kinds": len(files), "live without the guard": live, "tried": tried, "refused": refused,
            "executed": int(marker.exists()), "max seconds": max(seconds)}


def corrupt_section(workdir: Path) -> dict:
    """Every damaged entry, read on its own (timed) and through the library."""
    from ti.formats import load_embedding_file
    from ti.library import EmbeddingLibrary

    folder = workdir / "corrupt"
    folder.mkdir()
    entries = kit.corrupt_entries(WIDTH)
    timings = []
    for entry in entries:
        path = kit.write_entry(folder, entry)
        _, seconds = kit.timed(load_embedding_file, path)
        timings.append((seconds, entry.what))
    (folder / "good.pt").write_bytes(kit.good_pt(WIDTH))
    snapshot, refresh_seconds = kit.timed(lambda: EmbeddingLibrary(folder, expected_width=WIDTH).refresh())
    files = [e for e in entries if e.data is not None]
    slowest = max(timings)
    return {"tried": len(entries), "skipped by the library": len(snapshot.skipped), "files": len(files),
            "usable": list(snapshot.embeddings), "max seconds": slowest[0], "slowest": slowest[1],
            "median seconds": statistics.median(t for t, _ in timings), "library refresh seconds": refresh_seconds}


def kill_section(workdir: Path, kills: int, rng: random.Random) -> tuple[dict, list]:
    folder = workdir / "training"
    kit.prepare_training_folder(folder, NAME)
    embedding_file = folder / "embeddings" / f"{NAME}.pt"
    kinds = ["random"] * (kills // 2) + ["log-save"] * (kills - kills // 2 - kills // 5) + ["final-save"] * (kills // 5)
    rng.shuffle(kinds)
    trials = []
    for index, kind in enumerate(kinds, 1):
        steps = kit.embedding_step(embedding_file) + 3 if kind == "final-save" else LONG_RUN
        started = time.perf_counter()
        trial = kit.run_kill_trial(folder, NAME, kind, rng, steps=steps, save_every=SAVE_EVERY, max_random_seconds=3.0)
        trials.append(trial)
        print(f"  kill {index:2d}/{len(kinds)} {kind:10s} after {trial.seconds_to_kill:5.2f} s: ran from step "
              f"{trial.resumed_from} to {trial.reached_step}, file now at {trial.resumable_step}, newest copy "
              f"{trial.newest_copy_step}, mid-save {'yes' if trial.landed_in_save else 'no '}, corrupt "
              f"{len(trial.corrupt)} ({time.perf_counter() - started:.1f} s)", flush=True)
        for problem in trial.corrupt:
            print(f"    CORRUPT {problem}", flush=True)
    before = kit.embedding_step(embedding_file)
    resumed_from, output = kit.resume_to_the_end(folder, NAME, before + 3, SAVE_EVERY)
    corrupt, temps = kit.check_saved_files(folder / "embeddings", folder / "logs")
    finished = f"finished: {NAME} trained to step {before + 3}" in output and kit.embedding_step(embedding_file) == before + 3
    chained = all(trial.resumed_from == trial.start_step for trial in trials)
    return {
        "kills": len(trials),
        "kinds": {kind: kinds.count(kind) for kind in ("random", "log-save", "final-save")},
        "landed mid-save": sum(trial.landed_in_save for trial in trials),
        "corrupt files": sum(len(trial.corrupt) for trial in trials) + len(corrupt),
        "every run resumed from the previous file": chained,
        "final resume": f"from step {resumed_from} to {before + 3}: {'finished' if finished else 'FAILED'}",
        "finished": finished,
        "steps lost at most (resuming from embeddings/<name>.pt)": max(t.steps_lost for t in trials),
        "steps lost at most (from the newest log copy)": max(t.steps_lost_from_log_copy for t in trials),
        "leftover temp files": len(temps),
    }, trials


def disk_full_section(workdir: Path, saves: int = 20) -> dict:
    """Saves over an existing file on a full tmpfs (root), else with a simulated ENOSPC."""
    import torch

    from ti.embedding import Embedding
    from ti.formats import SaveFailed, load_embedding_file, save_embedding_file

    disk = workdir / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True).returncode == 0
    intact = clear = 0
    message = ""
    try:
        path = save_embedding_file(Embedding("x", torch.ones(1, WIDTH), step=1), disk / "x.pt")
        before = path.read_bytes()
        if mounted:
            filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(filler, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(filler)
        real_fsync = os.fsync
        if not mounted:
            def full_fsync(descriptor):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync = full_fsync
        try:
            for step in range(saves):
                try:
                    save_embedding_file(Embedding("x", torch.ones(75, 768), step=step + 2), path)
                except SaveFailed as error:
                    message = str(error)
                    clear += message.startswith("no space left on device while saving")
                intact += path.read_bytes() == before and load_embedding_file(path).step == 1
        finally:
            os.fsync = real_fsync
        temps = [p for p in disk.iterdir() if p.name.endswith(".tmp")]
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    return {"how": "300 KiB tmpfs, filled" if mounted else "simulated ENOSPC at fsync", "saves tried": saves,
            "previous file intact": intact, "clear message": clear, "temp files left": len(temps), "message": message}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kill -9 trials (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the files (default: a temp folder)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="soak-reliability-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    print(f"soak_reliability: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, work folder {workdir}", flush=True)
    try:
        print("hostile files …", flush=True)
        hostile = hostile_section(workdir)
        print("damaged files …", flush=True)
        corrupt = corrupt_section(workdir)
        print(f"kill -9 during training ({args.kills} trials) …", flush=True)
        kills, _ = kill_section(workdir, args.kills, rng)
        print("full disk …", flush=True)
        disk = disk_full_section(workdir)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print("\n== figures ==")
    print(f"hostile files: {hostile['kinds']} kinds ({hostile['live without the guard']} run code without the guard); "
          f"{hostile['tried']} loads tried (library, hypernetworks, info), {hostile['refused']} refused, "
          f"{hostile['executed']} executed; slowest {hostile['max seconds']:.2f} s")
    print(f"damaged files: {corrupt['tried']} tried, {corrupt['skipped by the library']} of {corrupt['files']} files skipped "
          f"with a reason (usable: {', '.join(corrupt['usable'])}); slowest {corrupt['max seconds']:.2f} s "
          f"({corrupt['slowest']}), median {corrupt['median seconds'] * 1000:.0f} ms; library refresh "
          f"{corrupt['library refresh seconds']:.2f} s")
    print(f"kill -9: {kills['kills']} kills ({', '.join(f'{n} {k}' for k, n in kills['kinds'].items())}), "
          f"{kills['landed mid-save']} landed halfway through a save; corrupt files: {kills['corrupt files']}; "
          f"every run resumed from the file the previous left: {kills['every run resumed from the previous file']}; "
          f"final resume {kills['final resume']}")
    print(f"steps lost at most: {kills['steps lost at most (resuming from embeddings/<name>.pt)']} resuming from "
          f"embeddings/{NAME}.pt, {kills['steps lost at most (from the newest log copy)']} from the newest log copy "
          f"(save every {SAVE_EVERY}); leftover temp files of interrupted saves: {kills['leftover temp files']}")
    print(f"full disk ({disk['how']}): {disk['saves tried']} saves, previous file intact {disk['previous file intact']}, "
          f"clear message {disk['clear message']}, temp files left {disk['temp files left']}: \"{disk['message']}\"")
    print(f"total {time.perf_counter() - started:.0f} s")
    failed = (hostile["executed"] or hostile["refused"] != hostile["tried"] or corrupt["max seconds"] >= kit.SECONDS_PER_FILE
              or kills["corrupt files"] or not kills["finished"] or not kills["every run resumed from the previous file"]
              or disk["previous file intact"] != disk["saves tried"] or disk["temp files left"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
