"""ollama-meter: who uses your Ollama models, what each call costs, where the time goes."""

__version__ = "0.1.0"
