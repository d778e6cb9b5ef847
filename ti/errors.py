"""One exception tree. Every message names the file or value, what was expected and what was found."""


class TIError(Exception):
    """Base of every error ti-studio raises on purpose (shown to users as one line)."""


class ConfigError(TIError, ValueError):
    """A bad option value; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class BadEmbeddingFile(TIError):
    """An embedding or hypernetwork file that cannot be read."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class UnsafeFile(BadEmbeddingFile):
    """A pickle that names something outside the allow-list; nothing from it was run."""


class ShapeMismatch(TIError):
    """An embedding whose width does not fit the loaded model."""


class ModelLoadError(TIError):
    """A model path or id that does not give a Stable Diffusion pipeline."""


class ScheduleSyntaxError(TIError, ValueError):
    """A learning-rate or clip-value schedule that does not parse; the message quotes the bad item."""


class PromptError(TIError, ValueError):
    """A prompt that cannot be encoded (e.g. an embedding longer than a chunk)."""


class TrainingError(TIError):
    """Training cannot start or had to stop (empty dataset, NaN loss, …)."""
