"""Options of a preprocessing run (`PreprocessConfig`), validated on construction.

The UI and the CLI build one; `ti.preprocess.preprocess_folder` runs it. Defaults are A1111's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ti.captioning import DEFAULT_CAPTION_MODEL
from ti.crops import AUTO_CROP_OBJECTIVES
from ti.errors import ConfigError
from ti.focal_crop import FocalWeights

EXISTING_CAPTION_ACTIONS = ("ignore", "copy", "prepend", "append")


@dataclass
class PreprocessConfig:
    """Options of one preprocessing run; defaults are A1111's."""

    source: str | Path = ""  # folder of raw pictures (and optional same-named .txt captions)
    destination: str | Path = ""  # created if missing; must not be, contain, or sit inside source
    width: int = 512
    height: int = 512
    existing_caption: str = "ignore"  # ignore | copy | prepend | append: what to do with <stem>.txt
    keep_original_size: bool = False  # also save the upright RGB picture at its own size
    flip: bool = False  # a mirrored copy after every output
    split: bool = False  # cut pictures much longer than the target into overlapping tiles
    split_threshold: float = 0.5  # split when aspect relative to target <= this (0..1)
    split_overlap: float = 0.2  # fraction of a tile shared with its neighbour (0..0.9)
    focal_crop: bool = False  # crop around edges/entropy/faces instead of the centre
    focal_face_weight: float = 0.9
    focal_entropy_weight: float = 0.15
    focal_edges_weight: float = 0.5
    auto_crop: bool = False  # crop to the size (multiples of 64) that best fits the aspect
    auto_crop_min_size: int = 384
    auto_crop_max_size: int = 768
    auto_crop_min_area: int = 64 * 64
    auto_crop_max_area: int = 640 * 640
    auto_crop_objective: str = "max-area"  # max-area | min-error
    auto_crop_error_threshold: float = 0.1  # largest accepted aspect error, 0..1
    caption: bool = False  # caption each output with BLIP
    caption_model: str = DEFAULT_CAPTION_MODEL  # local folder or hub id (used when no captioner is given)
    caption_in_filename: bool = False  # name outputs after their caption instead of the source stem

    def __post_init__(self):
        for name in ("source", "destination"):
            if not str(getattr(self, name)).strip():  # checked before Path(), which turns "" into "."
                raise ConfigError(name, "no folder given")
        self.source, self.destination = Path(self.source).expanduser(), Path(self.destination).expanduser()
        for name in ("width", "height", "auto_crop_min_size", "auto_crop_max_size", "auto_crop_min_area", "auto_crop_max_area"):
            setattr(self, name, _whole_number(getattr(self, name)))  # UI number widgets give 512.0
        source, destination = self.source.resolve(), self.destination.resolve()
        if source == destination:
            raise ConfigError("destination", f"must differ from the source folder, both are {source}")
        if destination.is_relative_to(source):
            raise ConfigError("destination", f"{destination} is inside the source folder {source}")
        if source.is_relative_to(destination):
            raise ConfigError("destination", f"the source folder {source} is inside it ({destination})")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 64 or value > 4096 or value % 8:
                raise ConfigError(name, f"must be a multiple of 8 between 64 and 4096, got {value!r}")
        if self.existing_caption not in EXISTING_CAPTION_ACTIONS:
            raise ConfigError("existing caption", f"expected one of {EXISTING_CAPTION_ACTIONS}, got {self.existing_caption!r}")
        _check_range("split threshold", self.split_threshold, 0.0, 1.0)
        _check_range("split overlap", self.split_overlap, 0.0, 0.9)
        for name in ("focal_face_weight", "focal_entropy_weight", "focal_edges_weight"):
            _check_range(name.replace("_", " "), getattr(self, name), 0.0)
        self._check_auto_crop()
        if self.caption and not str(self.caption_model).strip():
            raise ConfigError("caption model", "no folder or hub id given")

    def _check_auto_crop(self) -> None:
        for name in ("auto_crop_min_size", "auto_crop_max_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 64 or value > 4096 or value % 64:
                raise ConfigError(name.replace("_", " "), f"must be a multiple of 64 between 64 and 4096, got {value!r}")
        if self.auto_crop_min_size > self.auto_crop_max_size:
            raise ConfigError("auto crop min size", f"{self.auto_crop_min_size} is above the max size {self.auto_crop_max_size}")
        for name in ("auto_crop_min_area", "auto_crop_max_area"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(name.replace("_", " "), f"must be a whole number of pixels, got {value!r}")
        if not 0 < self.auto_crop_min_area <= self.auto_crop_max_area:
            raise ConfigError(
                "auto crop min area",
                f"must be positive and at most the max area {self.auto_crop_max_area}, got {self.auto_crop_min_area}",
            )
        if self.auto_crop_objective not in AUTO_CROP_OBJECTIVES:
            raise ConfigError("auto crop objective", f"expected one of {AUTO_CROP_OBJECTIVES}, got {self.auto_crop_objective!r}")
        _check_range("auto crop error threshold", self.auto_crop_error_threshold, 0.0, 1.0)

    def focal_weights(self) -> FocalWeights:
        """The focal-crop weights as `focal_crop` takes them."""
        return FocalWeights(faces=self.focal_face_weight, entropy=self.focal_entropy_weight, edges=self.focal_edges_weight)

    def auto_crop_options(self) -> dict:
        """Keyword arguments of `auto_size_crop`."""
        return dict(
            min_size=self.auto_crop_min_size, max_size=self.auto_crop_max_size,
            min_area=self.auto_crop_min_area, max_area=self.auto_crop_max_area,
            objective=self.auto_crop_objective, error_threshold=self.auto_crop_error_threshold,
        )  # fmt: skip

    def to_dict(self) -> dict:
        """The options as JSON-ready values (folders as strings)."""
        values = asdict(self)
        values["source"], values["destination"] = str(self.source), str(self.destination)
        return values


def _whole_number(value):
    """512.0 -> 512; anything else unchanged (and refused later if not an int)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_range(name: str, value: float, low: float, high: float = float("inf")) -> None:
    """Refuse a number outside [low, high] (or a non-number), naming the field."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high:
        return
    wanted = f"{low} or more" if high == float("inf") else f"between {low} and {high}"
    raise ConfigError(name, f"must be {wanted}, got {value!r}")
