"""Training losses: the completion loss of the LoRA trainers (with its two exact speed-ups) and the cross-encoder
losses (hard labels, the raters' spread, the teacher's soft labels).

Completion loss (`completion_loss`): weighted next-token cross-entropy over the completion tokens.

* LM head at label positions only (`logits_at_labels_only`): the head is applied only at the positions that predict
  a completion token (about 3 per direct example) instead of at every position. With Gemma's 262k vocabulary the
  full head dominates the cost of a step. TRL's fused LM head does the same only on Triton devices.
* Shared prefix (`share_prefix`): every direct prompt starts with the same instruction. When all rows of a batch
  start with the same prefix ids, the prefix runs once (batch 1, with gradients, `use_cache=True`), its KV cache is
  broadcast to the batch (`lref.models.kv_cache.expand_cache`), and only the rest of each row (pair + completion,
  right-padded) runs on that cache at positions `len(prefix) ...`. The gradients reach the prefix through the
  cache, so loss and gradients equal the plain forward's (tests: within 1e-5, sliding-window layers included).

Distillation loss (`soft_label_loss`):

    loss = T² · KL(teacher_T ‖ student_T) + λ · CE(student, human label)

* ``teacher_T`` is the teacher's distribution softened by the temperature T: ``softmax(log p_teacher / T)``
  (the teacher's label probabilities are what is cached, so they are softened in log space);
  ``student_T = softmax(logits / T)``. The KL is averaged over the batch; the T² factor keeps its gradients on the
  scale of the CE term whatever T is (Hinton et al., 2015).
* The CE is averaged over the rows that carry a human label; unlabelled rows (label ``IGNORE_LABEL``, -100) add
  nothing to it, and a batch with no labelled row has no CE term.

It plugs into `lref.training.cross_encoder.train_cross_encoder` as ``loss_fn``; the batch carries ``targets``
(N x K teacher probabilities) and ``labels`` (N label indices or -100):

    >>> import functools, torch
    >>> loss_fn = functools.partial(soft_label_loss, temperature=2.0, ce_weight=0.5)
    >>> batch = {"targets": torch.tensor([[0.7, 0.2, 0.1]]), "labels": torch.tensor([-100])}
    >>> float(loss_fn(torch.log(batch["targets"]), batch))  # student == teacher, no human label
    0.0
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

from lref.models.kv_cache import cache_keyword, expand_cache, output_cache

logger = logging.getLogger(__name__)

IGNORE_LABEL = -100
"""The label index of a pair without a human label (the value torch's cross-entropy ignores)."""
_MIN_PROB = 1e-8  # a teacher probability of exactly 0 would give log(0) = -inf


# ---------------------------------------------------------------------------------------------------------------------
# Completion loss (causal LMs)


_LOGIT_SCALES = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")


def fast_head_supported(lm) -> bool:
    """Whether the model's logits are `lm_head(decoder(x))`, optionally soft-capped, so that projecting only some
    hidden states is exact. Models that rescale their logits fall back to the full forward."""
    text_config = lm.config.get_text_config()
    if any(getattr(text_config, name, None) not in (None, 1, 1.0) for name in _LOGIT_SCALES):
        logger.warning("%s rescales its logits: computing the full logits", type(lm).__name__)
        return False
    return lm.get_output_embeddings() is not None


def shared_prefix_length(inputs: dict[str, Any]) -> int:
    """The length of the instruction prefix that every row of the batch starts with, or 0 when the shared-prefix
    path does not apply: no `prefix_lengths`, fewer than 2 rows, prefixes of different length or ids, padding inside
    the prefix, no token after it, or a label predicted from inside the prefix."""
    lengths = inputs.get("prefix_lengths")
    input_ids = inputs["input_ids"]
    if lengths is None or input_ids.shape[0] < 2:
        return 0
    n = int(lengths[0])
    if n < 1 or n >= input_ids.shape[1] or bool((lengths != n).any()):
        return 0
    if not bool((input_ids[:, :n] == input_ids[:1, :n]).all()):
        return 0
    mask = inputs.get("attention_mask")
    if mask is not None and not bool(mask[:, : n + 1].all()):
        return 0
    return n if bool((inputs["labels"][:, : n + 1] == -100).all()) else 0


def forward_with_shared_prefix(module, decoder, inputs: dict[str, Any], n_prefix: int):
    """Run the prefix (row 0, batch 1) through `decoder` with a cache, then the rest of every row through `module`
    (the decoder or the full model) on that cache broadcast to the batch, at positions `n_prefix ...`. Returns the
    module's output for the positions after the prefix, or None when the cache cannot be shared."""
    import torch

    input_ids = inputs["input_ids"]
    rows, width = input_ids.shape
    prefix = decoder(input_ids=input_ids[:1, :n_prefix], use_cache=True)
    cache = output_cache(prefix)
    cache = expand_cache(cache, rows) if cache is not None else None
    if cache is None:
        return None
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = torch.arange(n_prefix, width, device=input_ids.device).unsqueeze(0).expand(rows, -1)
    return module(
        input_ids=input_ids[:, n_prefix:],
        attention_mask=attention_mask,  # prefix + rest, right-padded
        position_ids=position_ids,
        use_cache=True,
        **{cache_keyword(decoder): cache},
    )


def completion_loss(
    model,
    inputs: dict[str, Any],
    *,
    logits_at_labels_only: bool = True,
    share_prefix: bool = True,
    num_items: Any = None,
):
    """Weighted next-token cross-entropy over the positions whose label is not -100 (at a row's first label position,
    its soft target's mix of label losses when the batch carries `soft_ids` / `soft_probs`; `token_losses`).

    Returns (sum of weighted token losses / `num_items`, number of label tokens). `num_items` defaults to the number
    of label tokens in this batch. With `logits_at_labels_only` the backbone's hidden states are projected through
    the LM head only at the positions that predict a label token; otherwise the model's full logits are used.

    With `share_prefix`, when every row starts with the same instruction prefix (`shared_prefix_length`), the prefix
    runs once (batch 1, with gradients) and its KV cache, broadcast to the batch, serves the rest of every row: the
    same loss and gradients as the plain forward (up to float rounding), with the prefix computed once instead of
    once per row. LoRA dropout then draws one mask for the prefix per batch instead of one per row (same
    expectation). Otherwise, or when the model's cache cannot be shared, the plain forward runs.
    """
    import torch
    from peft import PeftModel

    labels = inputs["labels"]
    weights = inputs.get("weights")
    shifted = labels[:, 1:]
    mask = shifted != -100
    targets = shifted[mask]
    soft = _soft_targets_at_labels(mask, inputs.get("soft_ids"), inputs.get("soft_probs"))
    lm = model.get_base_model() if isinstance(model, PeftModel) else model
    if logits_at_labels_only and not fast_head_supported(lm):
        logits_at_labels_only = False
    n_prefix = shared_prefix_length(inputs) if share_prefix else 0
    backbone = lm.get_decoder()
    module = backbone if logits_at_labels_only else model
    output = forward_with_shared_prefix(module, backbone, inputs, n_prefix) if n_prefix else None
    if output is None:
        n_prefix = 0
        output = module(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
    # Positions < n_prefix predict no label (checked), so the rows' rest lines up with `mask[:, n_prefix:]`.
    mask = mask[:, n_prefix:]
    if logits_at_labels_only:
        token_loss = head_token_losses(lm, output.last_hidden_state[:, :-1][mask], targets, soft)
    else:
        token_loss = token_losses(output.logits[:, :-1][mask], targets, *(soft or ()))
    if weights is not None:
        token_loss = token_loss * weights.to(token_loss.dtype)[:, None].expand_as(mask)[mask]
    count = int(mask.sum())
    denominator = num_items if num_items is not None else max(count, 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(token_loss.device).clamp(min=1)
    return token_loss.sum() / denominator, count


def _soft_targets_at_labels(mask, soft_ids, soft_probs):
    """(ids, probs) with one row per label position (in `mask`'s row-major order): a row's soft target at its first
    label position, zeros elsewhere; None when the batch has no soft targets."""
    import torch

    if soft_ids is None:
        return None
    counts = mask.sum(dim=1)
    first = torch.cumsum(counts, 0) - counts  # each row's first label position among the flattened ones
    rows = counts > 0
    ids = torch.zeros((int(counts.sum()), soft_ids.shape[1]), dtype=torch.long, device=soft_ids.device)
    probs = torch.zeros(ids.shape, dtype=soft_probs.dtype, device=soft_probs.device)
    ids[first[rows]] = soft_ids[rows]
    probs[first[rows]] = soft_probs[rows]
    return ids, probs


def token_losses(logits, targets, soft_ids=None, soft_probs=None):
    """Cross-entropy of `targets` under `logits` (positions x vocabulary); where a row of `soft_probs` has weight,
    the weighted sum of the cross-entropies of its `soft_ids` instead."""
    import torch
    import torch.nn.functional as F

    if soft_ids is None:
        return F.cross_entropy(logits.float(), targets, reduction="none")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    hard = -log_probs.gather(1, targets[:, None]).squeeze(1)
    spread = -(log_probs.gather(1, soft_ids) * soft_probs.to(log_probs.dtype)).sum(dim=1)
    return torch.where(soft_probs.sum(dim=1) > 0, spread, hard)


HEAD_CHUNK = 256
"""Label positions projected through the LM head at a time. CoT completions put hundreds of label tokens in a batch,
and with Gemma's 262k-token vocabulary their logits would take gigabytes at once; each chunk is recomputed in the
backward pass instead of kept."""


def head_token_losses(lm, hidden, targets, soft=None):
    """`token_losses` under `lm`'s output layer (soft-capped as the model does) at the hidden states `hidden`
    (positions x width), `HEAD_CHUNK` positions at a time: the same values and gradients as one pass. `soft`:
    (soft_ids, soft_probs) per position, or None."""
    import torch
    from torch.utils.checkpoint import checkpoint

    head = lm.get_output_embeddings()
    cap = getattr(lm.config.get_text_config(), "final_logit_softcapping", None)

    def chunk_losses(states, *chunk_targets):
        logits = head(states)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return token_losses(logits, *chunk_targets)

    columns = (hidden, targets, *(soft or ()))
    if len(targets) <= HEAD_CHUNK:
        return chunk_losses(*columns)
    recompute = torch.is_grad_enabled()
    chunks = [[column[i:i + HEAD_CHUNK] for column in columns] for i in range(0, len(targets), HEAD_CHUNK)]
    return torch.cat([checkpoint(chunk_losses, *chunk, use_reentrant=False) if recompute else chunk_losses(*chunk)
                      for chunk in chunks])


@contextmanager
def forward_replaced(module, forward):
    """Within the block, calling `module` runs `forward` instead of its own forward (hooks and wrappers kept). A
    forward set on the instance before (accelerate's autocast wrapper, say) is put back afterwards."""
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield module
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous



# ---------------------------------------------------------------------------------------------------------------------
# Cross-encoder losses (logits N x K over the scheme's labels)


def label_loss(logits, batch: dict[str, Any]):
    """Cross-entropy on the hard labels, weighted per example when the batch has `weights` (mean over the batch)."""
    return _weighted_mean(logits, batch["labels"], batch)


def rating_loss(logits, batch: dict[str, Any]):
    """Cross-entropy on the raters' spread (`targets`: each pair's `rating_target`, one-hot without a raw score),
    weighted as `label_loss`."""
    return _weighted_mean(logits, batch["targets"], batch)


def _weighted_mean(logits, targets, batch: dict[str, Any]):
    import torch.nn.functional as F

    loss = F.cross_entropy(logits.float(), targets, reduction="none")
    weights = batch.get("weights")
    if weights is not None:
        loss = loss * weights.to(loss.dtype)
    return loss.mean()


def soft_label_loss(logits, batch: dict[str, Any], *, temperature: float = 2.0, ce_weight: float = 0.5):
    """T² · KL(teacher_T ‖ student_T) averaged over the batch, plus `ce_weight` · CE on the labelled rows."""
    import torch
    import torch.nn.functional as F

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    if ce_weight < 0:
        raise ValueError(f"ce_weight must be >= 0, not {ce_weight}")
    if "targets" not in batch:
        raise KeyError("the batch has no 'targets' (teacher probabilities); pass targets= to train_cross_encoder")
    targets = batch["targets"].to(device=logits.device, dtype=torch.float32)
    if targets.shape != logits.shape:
        raise ValueError(f"targets are {tuple(targets.shape)} but the logits are {tuple(logits.shape)}")

    student_log_t = F.log_softmax(logits.float() / temperature, dim=-1)
    teacher_log_t = F.log_softmax(torch.log(targets.clamp_min(_MIN_PROB)) / temperature, dim=-1)
    kl = F.kl_div(student_log_t, teacher_log_t, log_target=True, reduction="batchmean")
    loss = kl * temperature**2

    labels = batch.get("labels")
    if ce_weight > 0 and labels is not None:
        labels = labels.to(logits.device)
        if (labels != IGNORE_LABEL).any():
            loss = loss + ce_weight * F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL)
    return loss


__all__ = [
    "HEAD_CHUNK",
    "IGNORE_LABEL",
    "completion_loss",
    "fast_head_supported",
    "forward_replaced",
    "forward_with_shared_prefix",
    "head_token_losses",
    "label_loss",
    "rating_loss",
    "shared_prefix_length",
    "soft_label_loss",
    "token_losses",
]
