"""Caption pictures with BLIP (transformers' BlipForConditionalGeneration + BlipProcessor).

The model comes from a local folder or a Hugging Face hub id. A folder is always read offline;
a hub id is read from the local cache only when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is
set. Nothing is downloaded behind the user's back in offline mode, and a missing model gives
one error that says how to get it.

Generation follows A1111's BLIP settings: greedy (1 beam), at least 24 and at most 48 tokens,
clamped to what the model's text decoder can hold.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from ti.errors import TIError

DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
DEFAULT_NUM_BEAMS = 1
DEFAULT_MIN_LENGTH = 24
DEFAULT_MAX_LENGTH = 48

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# Words HF BLIP checkpoints emit for "a" + blurry subject ("arafed man", "araffe woman").
_BLIP_ARTIFACT_WORDS = re.compile(r"\bar+af+\w*\s*", re.IGNORECASE)
_TRUE_VALUES = {"1", "on", "yes", "true"}


def how_to_get_caption_model(name: str = DEFAULT_CAPTION_MODEL) -> str:
    """The instruction shown when a caption model is missing."""
    return (
        f"get it once with `hf download {name} --local-dir models/BLIP` "
        f"(or `huggingface-cli download {name} --local-dir models/BLIP`), "
        "then pass --caption-model models/BLIP"
    )


def hub_offline() -> bool:
    """Whether the user asked Hugging Face libraries not to use the network."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE_VALUES for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def clean_caption(text: str) -> str:
    """Drop BLIP's nonsense words ("arafed", "araffe") and squeeze whitespace."""
    return " ".join(_BLIP_ARTIFACT_WORDS.sub(" ", text).split())


class BlipCaptioner:
    """A loaded BLIP captioning model; `caption(image)` returns one line of text.

    Args:
        model: a BlipForConditionalGeneration, already on `device`, in eval mode.
        processor: the matching BlipProcessor.
        device: where the model runs ("cpu", "cuda", "cuda:1").
        num_beams, min_length, max_length: generation settings (A1111's by default); lengths
            are in tokens and are clamped to the decoder's maximum.
    """

    def __init__(
        self,
        model,
        processor,
        device: str = "cpu",
        num_beams: int = DEFAULT_NUM_BEAMS,
        min_length: int = DEFAULT_MIN_LENGTH,
        max_length: int = DEFAULT_MAX_LENGTH,
    ):
        self.model = model
        self.processor = processor
        self.device = device
        decoder_limit = int(getattr(model.config.text_config, "max_position_embeddings", max_length))
        self.num_beams = max(1, int(num_beams))
        self.max_length = max(2, min(int(max_length), decoder_limit))
        self.min_length = max(0, min(int(min_length), self.max_length))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | None = None, precision: str | None = None,
                        **generation) -> "BlipCaptioner":
        """Load BLIP from a local folder or a hub id.

        Args:
            name_or_path: a folder holding a saved BlipForConditionalGeneration and BlipProcessor,
                or a hub id such as "Salesforce/blip-image-captioning-base".
            device: "cpu", "cuda", …; None picks CUDA when present.
            precision: "full", "half" or "bf16"; None: half on CUDA, full on the CPU (as models load).
            **generation: num_beams, min_length, max_length.

        Returns:
            A ready captioner.

        Raises:
            TIError: the folder is missing, the model is not in the local cache while offline (the
                message says how to get it), or the files are not a BLIP captioning model.
        """
        import torch
        from transformers import AutoConfig, BlipForConditionalGeneration, BlipProcessor

        from ti.pipeline import pick_dtype

        source, local_only = _resolve_source(name_or_path)
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError) as exc:  # ValueError: a config.json without a model type
            if local_only and not Path(source).is_dir():
                raise TIError(
                    f"caption model {name_or_path!r} is not available offline (not a folder, not in the "
                    f"Hugging Face cache); {how_to_get_caption_model()}"
                ) from exc
            raise TIError(f"caption model {name_or_path!r} could not be loaded ({exc}); {how_to_get_caption_model()}") from exc
        if config.model_type != "blip":
            raise TIError(
                f"caption model {name_or_path!r}: expected a BLIP captioning model, found model type {config.model_type!r}"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = pick_dtype(precision, torch.device(device))  # as the Stable Diffusion model's
        with _quiet_transformers_progress():
            try:
                processor = BlipProcessor.from_pretrained(source, local_files_only=local_only)
                model = BlipForConditionalGeneration.from_pretrained(source, local_files_only=local_only)
            except (OSError, ValueError, KeyError) as exc:
                raise TIError(f"caption model {name_or_path!r}: files incomplete or not BLIP ({exc})") from exc
        # Cast after loading: the dtype keyword of from_pretrained changed name across transformers versions.
        model.to(device=device, dtype=dtype).eval()
        return cls(model, processor, device=str(device), **generation)

    def caption(self, image: Image.Image) -> str:
        """Describe a picture in one line.

        Args:
            image: any PIL image (converted to RGB).

        Returns:
            The caption, without special tokens or BLIP's nonsense words; may be empty.
        """
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            token_ids = self.model.generate(
                pixel_values=pixel_values,
                num_beams=self.num_beams,
                min_length=self.min_length,
                max_length=self.max_length,
                do_sample=False,
            )
        return clean_caption(self.processor.decode(token_ids[0], skip_special_tokens=True))


@contextmanager
def _quiet_transformers_progress():
    """Hide transformers' "Loading weights" bar (ours is the one that matters), then restore it."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _resolve_source(name_or_path: str | Path) -> tuple[str, bool]:
    """Return (what to pass to from_pretrained, whether to stay offline).

    Raises:
        TIError: a path that is not a folder, or a name that is neither a folder nor a hub id.
    """
    text = str(name_or_path).strip()
    if not text:
        raise TIError(f"caption model: no folder or hub id given; {how_to_get_caption_model()}")
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise TIError(f"caption model {text!r}: expected a folder (config.json, model weights, processor files), found a file")
    if not _HUB_ID.match(text) or text.startswith("."):
        raise TIError(f"caption model folder {text!r} not found; {how_to_get_caption_model()}")
    return text, hub_offline()


def save_tiny_blip(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight BLIP (model + processor) with the real file layout.

    For tests and demos: it loads through `BlipCaptioner.from_pretrained` like a real one and
    runs the real code path in well under a second, but its captions are nonsense words.

    Args:
        folder: where to save (created).
        seed: torch seed for the weights.

    Returns:
        The folder.
    """
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    words = "a an the of photo picture painting cat dog house tree red blue green sky on with in and man woman".split()
    (folder / "vocab.txt").write_text("\n".join(special + words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder), bos_token="[DEC]")
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text_config = dict(
        vocab_size=len(special) + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=40,
        pad_token_id=0, sep_token_id=3, eos_token_id=3, bos_token_id=special.index("[DEC]"),
    )  # fmt: skip
    vision_config = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=32))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
