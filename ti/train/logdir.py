"""The run's log folder, laid out as A1111 lays it out (a1111-compat.md §4):

    <log_dir>/<YYYY-MM-DD>/<name>/
        embeddings/<name>-<step>.pt (+ .optim)
        images/<name>-<step>.png                 preview, infotext in the `parameters` chunk
        image_embeddings/<name>-<step>.png       the preview carrying the embedding
        textual_inversion_loss.csv               step, epoch, epoch_step, loss, learn_rate
        settings-<YYYY-MM-DD-HH-MM-SS>.json

A hypernetwork run has images/, hypernetwork_loss.csv and the settings file (its copies go to
the hypernetworks folder, as A1111's do).

A file named `<name>-500` holds step 500 (A1111's are one off: `-500` holds step 499).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ti.formats import write_file_atomically

if TYPE_CHECKING:  # annotations only (the loop imports this module)
    from ti.pipeline import LoadedModel
    from ti.train.batches import BatchLayout
    from ti.train.config import TrainConfig
    from ti.train.parallel import DataParallel

LOSS_CSV_NAME = "textual_inversion_loss.csv"
HYPERNETWORK_LOSS_CSV_NAME = "hypernetwork_loss.csv"
LOSS_CSV_COLUMNS = ("step", "epoch", "epoch_step", "loss", "learn_rate")


@dataclass(frozen=True)
class TrainLogDir:
    """Paths of one run's outputs; folders are made when first written to."""

    root: Path
    name: str
    loss_csv_name: str = LOSS_CSV_NAME

    @classmethod
    def for_run(cls, log_dir: Path, name: str, started: dt.datetime,
                loss_csv_name: str = LOSS_CSV_NAME) -> "TrainLogDir":
        return cls(Path(log_dir) / started.strftime("%Y-%m-%d") / name, name, loss_csv_name)

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def image_embeddings(self) -> Path:
        return self.root / "image_embeddings"

    @property
    def loss_csv(self) -> Path:
        return self.root / self.loss_csv_name

    def embedding_copy(self, step: int) -> Path:
        return self.embeddings / f"{self.name}-{step}.pt"

    def preview(self, step: int) -> Path:
        return self.images / f"{self.name}-{step}.png"

    def image_embedding(self, step: int) -> Path:
        return self.image_embeddings / f"{self.name}-{step}.png"

    def append_loss(self, step: int, epoch: int, epoch_step: int, loss: float, learn_rate: float) -> None:
        """Add one row (header first in a new file). One short append per step: a crash can
        at worst cut the last line, which CSV readers skip or flag."""
        self.root.mkdir(parents=True, exist_ok=True)
        new_file = not self.loss_csv.exists()
        row = io.StringIO()
        writer = csv.writer(row, lineterminator="\n")
        if new_file:
            writer.writerow(LOSS_CSV_COLUMNS)
        writer.writerow([step, epoch, epoch_step, f"{loss:.7f}", f"{learn_rate:g}"])
        with open(self.loss_csv, "a", encoding="utf-8", newline="") as handle:
            handle.write(row.getvalue())

    def write_settings(self, settings: dict, started: dt.datetime) -> Path:
        """settings-<datetime>.json with `datetime` first, written atomically."""
        path = self.root / f"settings-{started.strftime('%Y-%m-%d-%H-%M-%S')}.json"
        content = {"datetime": started.isoformat(timespec="seconds"), **settings}
        return write_file_atomically(path, json.dumps(content, indent=2, ensure_ascii=False, default=str).encode("utf-8"))


def read_loss_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a loss CSV as dicts (for tests and the UI's chart)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def run_settings(config: TrainConfig, model: LoadedModel, layout: BatchLayout, samples, skipped, start_step: int,
                 end_step: int, parallel: DataParallel) -> dict:
    """What settings-<datetime>.json records: every option, plus what the run made of them."""
    buckets: dict[str, int] = {}
    for sample in samples:
        key = f"{sample.bucket[0]}x{sample.bucket[1]}"
        buckets[key] = buckets.get(key, 0) + 1
    return {
        **config.to_dict(),
        "template_path": str(config.template_path()),
        "model_name": model.name,
        "model_hash": model.short_hash,
        "dataset_size": len({sample.source for sample in samples}),
        "num_samples": len(samples),
        "buckets": buckets,
        "skipped_images": [{"path": str(item.path), "reason": item.reason} for item in skipped],
        "effective_batch_size": layout.batch_size,  # per micro-batch, all processes together
        "num_processes": parallel.num_processes,
        "weights_dtype": str(model.dtype).removeprefix("torch."),
        "effective_grad_accum": layout.grad_accum,
        "steps_per_epoch": layout.steps_per_epoch,
        "start_step": start_step,
        "end_step": end_step,
    }
