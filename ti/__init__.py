"""ti-studio core: textual inversion and hypernetworks for Stable Diffusion, without any UI."""

__version__ = "0.1.0"
