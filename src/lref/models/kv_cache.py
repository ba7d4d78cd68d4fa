"""Sharing one instruction prefix's KV cache across a batch: what the fast scorer and the shared-prefix training loss
both do.

The prefix runs once (batch 1) with `use_cache=True`; `expand_cache` then broadcasts its keys and values to the
batch as `expand` views (no copy; differentiable, so gradients from every row reach the prefix), and the rest of each
row runs on that cache at positions `len(prefix) ...`.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any


def cache_keyword(module: Any) -> str:
    """The name of a forward's cache argument: `cache` in transformers >= 5.2x, else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a forward with `use_cache=True` returned (`cache` or `past_key_values`), or None."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def expand_cache(cache: Any, batch_size: int) -> Any:
    """A shallow copy of a one-row cache whose layers hold the keys/values broadcast to `batch_size` rows (`expand`
    views: differentiable, no copy; a backward pass sums the rows' gradients into the prefix). The copy's layers get
    new tensors when a batch's tokens are appended (`torch.cat`), so the shared cache and anything autograd saved are
    never mutated. Returns None for a cache of an unknown layout."""
    import torch

    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    expanded = copy.copy(cache)
    clones = []
    for layer in layers:
        clone = copy.copy(layer)
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if torch.is_tensor(keys) and keys.numel():
            if keys.dim() != 4 or keys.shape[0] != 1 or not torch.is_tensor(values):
                return None
            clone.keys = keys.expand(batch_size, -1, -1, -1)
            clone.values = values.expand(batch_size, -1, -1, -1)
        clones.append(clone)
    expanded.layers = clones
    return expanded


__all__ = ["cache_keyword", "expand_cache", "output_cache"]
