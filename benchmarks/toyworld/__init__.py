"""A small *trained* Stable-Diffusion-shaped world, to measure whether training teaches.

The world is scikit-learn's handwritten digits (1,797 pictures, shipped inside the package),
drawn at 64x64. A tiny SD-shaped pipeline (real CLIP BPE tokenizer, CLIP text encoder,
AutoencoderKL with SD's 8x downsampling, UNet2DConditionModel, SD's noise schedule) is
pretrained on them with captions that name every digit but one: the concept (the zero), which
the captions only describe ("a hollow digit"), so the world draws it but has no word for it.

- data.py: the pictures, the captions, the concept.
- build.py: pretraining (`python -m benchmarks.toyworld.build`), writes model/ (committed).
- world.py: load the pipeline, generate, and the classifiers that say what a picture shows.
- runs.py / peer.py / hypernetwork.py: training runs (ours, diffusers' script) and their scores.
"""
