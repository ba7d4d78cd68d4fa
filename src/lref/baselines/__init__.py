"""Baselines that need no LLM: `lref.baselines.lexical` (query–title features + a scikit-learn classifier)."""
