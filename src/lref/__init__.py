"""lref: LLM relevance judges for e-commerce search (LREF, arXiv 2503.09223)."""

from lref.labels import PRESETS, LabelScheme, get_scheme

__version__ = "0.1.0"
__all__ = ["PRESETS", "LabelScheme", "get_scheme", "__version__"]
