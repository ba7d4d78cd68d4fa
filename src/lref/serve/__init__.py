"""HTTP services: an OpenAI-compatible endpoint over a local LLM (``lref serve llm``)."""
