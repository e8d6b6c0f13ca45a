import pytest
import torch

from cbam.classification.accuracy import error_percent, topk_correct


def test_topk_correct_counts_hand_made_logits():
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # target 0: top-1 hit
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 1: rank 5 -> top-5 hit only
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 5: rank 6 -> miss
            [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # target 2: top-1 hit
        ]
    )
    targets = torch.tensor([0, 1, 5, 2])
    assert topk_correct(logits, targets, (1, 5)).tolist() == [2.0, 3.0]
    assert error_percent(2, 4) == 50.0 and error_percent(3, 4) == 25.0


def test_top5_with_fewer_than_five_classes_counts_every_target():
    logits = torch.randn(10, 3)
    targets = torch.randint(0, 3, (10,))
    assert topk_correct(logits, targets, (5,)).item() == 10


def test_error_of_nothing_is_refused():
    with pytest.raises(ValueError, match="no images"):
        error_percent(0, 0)
