"""Turn our errors into messages the page shows."""

from __future__ import annotations

import gradio as gr

from ti.errors import TIError


def user_error(exc: Exception) -> gr.Error:
    """A gr.Error with one readable line (TIError text as is; others with their type)."""
    if isinstance(exc, TIError):
        return gr.Error(str(exc))
    return gr.Error(f"{type(exc).__name__}: {exc}")
