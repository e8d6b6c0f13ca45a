"""Localisation scores on hand-made maps and boxes, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbam.explain import bootstrap_interval, box_mask, energy_in_boxes, iou_at_threshold, pointing_game

BOX = torch.tensor([[2, 1, 6, 4]])  # columns 2..5, rows 1..3: 12 pixels


def test_box_mask_is_half_open_in_pixels() -> None:
    mask = box_mask(BOX, 8, 8)
    assert mask.sum() == 12 and mask[1, 2] and mask[3, 5] and not mask[4, 2] and not mask[1, 6]


def test_pointing_game_hits_and_misses() -> None:
    cam = torch.zeros(8, 8)
    cam[2, 3] = 1.0
    assert pointing_game(cam, BOX)
    cam[7, 7] = 2.0
    assert not pointing_game(cam, BOX)
    assert pointing_game(cam, torch.tensor([[0, 0, 1, 1], [7, 7, 8, 8]])), "any of several boxes"


def test_energy_is_the_share_of_mass_inside() -> None:
    cam = torch.zeros(8, 8)
    cam[2, 3] = 3.0
    cam[6, 6] = 1.0
    assert energy_in_boxes(cam, BOX) == pytest.approx(0.75)
    assert energy_in_boxes(torch.zeros(8, 8), BOX) == 0.0


def test_iou_of_the_thresholded_region_with_the_box() -> None:
    cam = torch.zeros(8, 8)
    cam[1:4, 2:6] = 0.9  # exactly the box
    assert iou_at_threshold(cam, BOX) == pytest.approx(1.0)
    cam[0, 0:6] = 0.7  # 6 more pixels above the threshold
    assert iou_at_threshold(cam, BOX) == pytest.approx(12 / 18)
    assert iou_at_threshold(cam, BOX, threshold=0.8) == pytest.approx(1.0)


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible() -> None:
    values = torch.tensor([1.0] * 30 + [0.0] * 70)
    first, second = bootstrap_interval(values, seed=3), bootstrap_interval(values, seed=3)
    assert first == second
    assert first.mean == pytest.approx(0.3)
    assert 0.18 < first.low < 0.3 < first.high < 0.42
    assert bootstrap_interval(torch.ones(5)).low == 1.0
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_interval(torch.tensor([]))


def test_a_grouped_bootstrap_resamples_whole_groups() -> None:
    rng = np.random.default_rng(0)
    values = (rng.random(200) < 0.3).astype(float)
    copies, groups = np.repeat(values, 4), np.repeat(np.arange(200), 4)
    alone = bootstrap_interval(values, seed=1)
    grouped = bootstrap_interval(copies, seed=1, groups=groups)
    naive = bootstrap_interval(copies, seed=1)
    # four copies of each image in one group carry what the images alone carry; taken apart they would halve the width
    assert grouped == alone
    assert naive.high - naive.low < 0.6 * (alone.high - alone.low)
