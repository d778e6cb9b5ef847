"""A hypernetwork on the toy world: teach it a style the world lacks, and measure the change.

The world only ever saw digits in full-brightness ink. The hypernetwork is trained on pictures
of the named digits in faint ink (data.faint_training_pictures), captioned with the digit's word
in a sidecar .txt, through our library with the template hypernetwork.txt ([filewords]). Then,
for each named digit, the same seeds are drawn with "a photo of a <word>" with and without
`<hypernet:faint:1>`, and the readers say what share is faint, and what share still shows the
asked digit. (A first choice, black-on-white pictures, cannot be drawn at all: the world's VAE
never saw them and decodes them back to white on black, so no UNet-side change can show them.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.toyworld.data import CONCEPT_DIGIT, DIGIT_WORDS, faint_training_pictures
from benchmarks.toyworld.runs import EVAL_PROMPT, Curve, run_timed, toy_training_options
from benchmarks.toyworld.world import digit_reader, generate, is_faint

HYPERNETWORK_NAME = "faint"


def write_faint_data(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` faint pictures of the named digits, each with a sidecar caption (its word)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (array, label) in enumerate(faint_training_pictures(count, seed)):
        Image.fromarray(array).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(DIGIT_WORDS[label], encoding="utf-8")
    return folder


def train_hypernetwork_run(model, work: Path, data_dir: Path, *, steps: int, save_every: int, learning_rate: str,
                           batch_size: int = 1, seed: int = 0) -> tuple[Curve, dict[int, Path]]:
    """Create a hypernetwork for the world's attention widths and train it; returns (timing, {step: file})."""
    from ti.hypernetwork import create_hypernetwork
    from ti.hypernetwork.apply import attention_widths
    from ti.train import HypernetworkTrainConfig, train_hypernetwork

    folder = work / "hypernetworks"
    sizes = sorted(set(attention_widths(model.pipe.unet)))
    start = create_hypernetwork(HYPERNETWORK_NAME, folder, sizes=sizes, overwrite=True, seed=seed)
    start_copy = folder / "start" / start.name  # the step-0 weights, kept apart (the run rewrites <name>.pt)
    start_copy.parent.mkdir()
    start_copy.write_bytes(start.read_bytes())
    config = HypernetworkTrainConfig(name=HYPERNETWORK_NAME, data_dir=data_dir, learning_rate=learning_rate,
                                     batch_size=batch_size, **toy_training_options(work, steps, save_every, seed))
    wall, reached = run_timed(train_hypernetwork, model, config, folder)
    files = {0: start_copy}
    for copy in folder.glob(f"{HYPERNETWORK_NAME}-*.pt"):
        files[int(copy.stem.rsplit("-", 1)[1])] = copy
    curve = Curve("hypernetwork", wall_seconds=wall, settings={"learning_rate": learning_rate, "batch_size": batch_size})
    curve.seconds = [reached.get(step, wall) for step in sorted(files)]
    return curve, files


def style_shares(model, hypernetwork_file: Path | None, *, samples_per_digit: int, seed: int) -> dict[str, float]:
    """Over the named digits: share drawn faint, and share showing the asked digit."""
    from ti.hypernetwork import HypernetworkLibrary

    library = None
    tag = ""
    if hypernetwork_file is not None:
        library = HypernetworkLibrary(hypernetwork_file.parent)
        tag = f" <hypernet:{hypernetwork_file.stem}:1>"
    reader = digit_reader()
    faint, right_digit = [], []
    for digit, word in enumerate(DIGIT_WORDS):
        if digit == CONCEPT_DIGIT:
            continue
        images = generate(model, EVAL_PROMPT.format(word) + tag, samples_per_digit, seed, hypernetworks=library)
        faint.append(is_faint(images))
        right_digit.append(reader.digits(images) == digit)
    return {"faint": float(np.concatenate(faint).mean()), "asked_digit": float(np.concatenate(right_digit).mean())}


def hypernetwork_curve(model, curve: Curve, files: dict[int, Path], *, samples_per_digit: int, seed: int) -> dict:
    """Fill curve.steps/shares (share drawn faint) and return {step: both shares}."""
    by_step = {}
    for step in sorted(files):
        by_step[step] = style_shares(model, files[step], samples_per_digit=samples_per_digit, seed=seed)
    curve.steps = sorted(by_step)
    curve.shares = [by_step[s]["faint"] for s in curve.steps]
    return by_step
