"""entropy-serve: an OpenAI-compatible, entropy-adaptive serving layer on vLLM."""

__version__ = "0.1.0"
