"""Classification metrics as the paper reports them: top-1 and top-5 error."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """How many targets are among the k highest logits, for each k: a float tensor (len(ks),).

    With fewer classes than k, every target is among the top k.
    """
    largest = min(max(ks), logits.shape[1])
    top = logits.topk(largest, dim=1).indices  # (N, largest)
    hits = top == targets.unsqueeze(1)
    return torch.stack([hits[:, : min(k, largest)].any(dim=1).sum() for k in ks]).float()


def error_percent(correct: float, total: float) -> float:
    """100 x (1 - correct / total): the paper's error metric."""
    if total <= 0:
        raise ValueError("no images were evaluated")
    return 100.0 * (1.0 - correct / total)
