"""Use the trained toy world: load it, generate through our txt2img, say what pictures show.

The classifiers are scikit-learn logistic regressions on the real digits, read the way a
generated picture is (64x64 -> grey 8x8, data.downsample): `DigitReader.digits` says which digit
a picture shows (its ink brightness normalised first), `is_faint` whether its ink is dim (the
style the world lacks, for hypernetworks: its brightest tenth below FAINT_PEAK). Fitted on the
first 1,200 real digits and scored on the other 597 (other writers), the digit reader is right
92% of the time (`python -m benchmarks.toyworld.world` prints the figures); the benchmark itself
uses a reader fitted on all 1,797.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from benchmarks.toyworld.data import CONCEPT_DIGIT, downsample, faint, load_digits, upsample

WORLD_DIR = Path(__file__).resolve().parent / "model"


def load_world(model_dir: Path = WORLD_DIR, device: str | None = "cpu"):
    """The world as our LoadedModel (float32)."""
    from ti.config import ModelConfig
    from ti.pipeline import load_model

    if not (Path(model_dir) / "model_index.json").is_file():
        raise SystemExit(f"no toy world at {model_dir}; build it: python -m benchmarks.toyworld.build")
    return load_model(ModelConfig(model=str(model_dir), device=device, precision="full"))


# Between the brightest tenth of the world's own pictures through its VAE (0.77 at the least) and
# of faint ones (0.65 at the most): python -m benchmarks.toyworld.world prints both.
FAINT_PEAK = 0.71


def ink_peak(images: torch.Tensor) -> torch.Tensor:
    """(N,) the mean grey level (0..1) of each picture's brightest tenth of pixels."""
    grey = ((images.float().clamp(-1, 1) + 1) / 2).mean(dim=1).flatten(1)
    return grey.topk(max(1, grey.shape[1] // 10), dim=1).values.mean(dim=1)


def is_faint(images: torch.Tensor) -> np.ndarray:
    return (ink_peak(images) < FAINT_PEAK).numpy()


@dataclass
class DigitReader:
    digit_model: object

    def features(self, images: torch.Tensor) -> np.ndarray:
        return downsample(images) / 16  # 0..1: the solver converges in a fraction of a second

    def digits(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, 64, 64) in [-1, 1] -> the digit each shows, (N,); dim ink brightened first."""
        grey01 = (images.float().clamp(-1, 1) + 1) / 2
        brightened = (grey01 / ink_peak(images).clamp(min=0.05)[:, None, None, None]).clamp(0, 1) * 2 - 1
        return self.digit_model.predict(self.features(brightened))


@lru_cache(maxsize=2)
def digit_reader(fit_count: int | None = None) -> DigitReader:
    """The digit classifier, fitted on the real digits (the first `fit_count`, or all) as a picture
    of the world shows them."""
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    images, labels = digits.images[:fit_count], digits.labels[:fit_count].numpy()
    seen = downsample(images) / 16  # real pictures through the world's 64x64 -> 8x8 reading
    digit_model = LogisticRegression(max_iter=2000, C=10.0).fit(seen, labels)
    return DigitReader(digit_model)


def pil_to_tensor(images) -> torch.Tensor:
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def generate(model, prompt: str, count: int, seed: int, embeddings: dict | None = None,
             hypernetworks=None, steps: int = 20, cfg_scale: float = 7.0, sampler: str = "Euler a",
             negative_prompt: str = "") -> torch.Tensor:
    """`count` pictures of `prompt` through our txt2img (seeds seed..seed+count-1), as a tensor."""
    from ti.config import GenerateConfig
    from ti.generate import txt2img

    batch = min(count, 64)
    config = GenerateConfig(prompt=prompt, negative_prompt=negative_prompt, steps=steps, sampler=sampler,
                            cfg_scale=cfg_scale, seed=seed, width=64, height=64, batch_size=batch,
                            batch_count=-(-count // batch))
    result = txt2img(model, embeddings or {}, config, hypernetworks=hypernetworks)
    return pil_to_tensor([item.image for item in result.images[:count]])


def concept_share(images: torch.Tensor, digit: int = CONCEPT_DIGIT) -> float:
    return float((digit_reader().digits(images) == digit).mean())


def classifier_accuracy(fit_count: int = 1200) -> dict[str, float]:
    """Held out: fitted on the first `fit_count` real digits, scored on the rest (other writers)."""
    digits = load_digits()
    reader = digit_reader(fit_count)
    held_out, labels = digits.images[fit_count:], digits.labels[fit_count:].numpy()
    return {"digit": float((reader.digits(held_out) == labels).mean()),
            "digit_on_faint": float((reader.digits(faint(held_out)) == labels).mean())}


def _report() -> None:
    for key, value in classifier_accuracy().items():
        print(f"held-out {key}: {value:.3f}")
    images = load_digits().images
    vae = load_world().pipe.vae
    with torch.no_grad():
        for name, pictures in (("plain", images), ("faint", faint(images))):
            decoded = torch.cat([vae.decode(vae.encode(pictures[i:i + 256]).latent_dist.mean).sample
                                 for i in range(0, len(pictures), 256)])
            peaks = ink_peak(decoded)
            print(f"{name} pictures through the world's VAE: ink peak {peaks.min():.2f}..{peaks.max():.2f}, "
                  f"read as faint {is_faint(decoded).mean():.3f}")
    noise = upsample(torch.rand(200, 8, 8))
    print(f"share of uniform-noise pictures read as the concept: {concept_share(noise):.3f}")


if __name__ == "__main__":
    _report()
