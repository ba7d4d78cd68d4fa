"""The distillation loss: match the teacher's soft labels, plus cross-entropy on the human labels where there are any.

    loss = T² · KL(teacher_T ‖ student_T) + λ · CE(student, human label)

* ``teacher_T`` is the teacher's distribution softened by the temperature T: ``softmax(log p_teacher / T)``
  (the teacher's label probabilities are what is cached, so they are softened in log space);
  ``student_T = softmax(logits / T)``. The KL is averaged over the batch; the T² factor keeps its gradients on the
  scale of the CE term whatever T is (Hinton et al., 2015).
* The CE is averaged over the rows that carry a human label; unlabelled rows (label ``IGNORE_LABEL``, -100) add
  nothing to it, and a batch with no labelled row has no CE term.

It plugs into `lref.models.cross_encoder.train_cross_encoder` as ``loss_fn``; the batch carries ``targets``
(N x K teacher probabilities) and ``labels`` (N label indices or -100):

    >>> import functools, torch
    >>> loss_fn = functools.partial(soft_label_loss, temperature=2.0, ce_weight=0.5)
    >>> batch = {"targets": torch.tensor([[0.7, 0.2, 0.1]]), "labels": torch.tensor([-100])}
    >>> float(loss_fn(torch.log(batch["targets"]), batch))  # student == teacher, no human label
    0.0
"""

from __future__ import annotations

from typing import Any

IGNORE_LABEL = -100
"""The label index of a pair without a human label (the value torch's cross-entropy ignores)."""
_MIN_PROB = 1e-8  # a teacher probability of exactly 0 would give log(0) = -inf


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


__all__ = ["IGNORE_LABEL", "soft_label_loss"]
