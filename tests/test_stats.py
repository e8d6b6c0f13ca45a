"""cbam.stats: intervals of mean errors and paired differences over seeds x images, checked against known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cbam.stats import (
    Estimate,
    images_needed,
    mean_error,
    paired_difference,
    seeds_and_images_needed,
    seeds_needed,
    verdict,
)


def _expit(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _planned_half_width(var_seeds: float, seeds: int, var_images: float, clusters: float) -> float:
    """t(0.975, Satterthwaite df) * sqrt(V), written out here apart from the implementation."""
    terms = (var_seeds**2 / (seeds - 1) if var_seeds > 0 else 0.0) + (
        var_images**2 / (clusters - 1) if var_images > 0 else 0.0
    )
    variance = var_seeds + var_images
    return float(scipy_stats.t.ppf(0.975, variance**2 / terms)) * math.sqrt(variance)


def test_identical_networks_differ_by_exactly_zero_and_equal_rates_include_zero():
    rng = np.random.default_rng(1)
    errors = (rng.random((5, 300)) < 0.2).astype(float)
    same = paired_difference(errors, errors.copy())
    assert (same.estimate, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (same.var_seeds, same.var_images) == (0.0, 0.0)

    a, b = rng.random((5, 2000)) < 0.2, rng.random((5, 2000)) < 0.2
    independent = paired_difference(b, a)
    assert independent.low < 0 < independent.high
    assert independent.p_value > 0.05


def test_a_network_right_where_the_baseline_is_wrong_lowers_error_by_the_baseline_rate():
    rng = np.random.default_rng(2)
    baseline = (rng.random((5, 1000)) < 0.2).astype(float)
    better = np.where(baseline == 1, 0.0, baseline)
    result = paired_difference(better, baseline)
    assert result.estimate == -baseline.mean()
    assert result.high < 0
    assert result.p_value < 0.001


def test_a_small_case_matches_the_method_worked_by_hand():
    # d = b - a, cell by cell; images 0 and 1 form one cluster, images 2 and 3 their own
    b = [[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]]
    a = [[0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]]
    groups = [7, 7, 3, 5]
    seeds, images = 3, 4
    d = [[b[s][i] - a[s][i] for i in range(images)] for s in range(seeds)]
    mean = sum(sum(row) for row in d) / (seeds * images)
    per_seed = [sum(row) / images for row in d]
    var_seeds = sum((x - mean) ** 2 for x in per_seed) / (seeds - 1) / seeds
    per_image = [sum(d[s][i] for s in range(seeds)) / seeds for i in range(images)]
    totals = [per_image[0] + per_image[1], per_image[2], per_image[3]]
    sizes = [2, 1, 1]
    clusters = 3
    spread = sum((t - n * mean) ** 2 for t, n in zip(totals, sizes, strict=True))
    var_images = clusters / (clusters - 1) * spread / images**2
    variance = var_seeds + var_images
    df = variance**2 / (var_seeds**2 / (seeds - 1) + var_images**2 / (clusters - 1))
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(variance)
    p_value = 2 * scipy_stats.t.sf(abs(mean) / math.sqrt(variance), df)

    result = paired_difference(b, a, groups=groups)
    assert mean == pytest.approx(1 / 3)
    assert (result.seeds, result.images, result.clusters) == (3, 4, 3)
    assert result.estimate == pytest.approx(mean)
    assert result.var_seeds == pytest.approx(var_seeds)
    assert result.var_images == pytest.approx(var_images)
    assert result.df == pytest.approx(df)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half))
    assert result.p_value == pytest.approx(p_value)

    # every image its own cluster: the cluster-robust image variance is exactly var(c, ddof=1) / N
    single = paired_difference(b, a)
    assert single.var_images == pytest.approx(np.var(per_image, ddof=1) / images)
    assert paired_difference(b, a, groups=np.arange(images)) == single


def test_copies_of_an_image_in_one_cluster_add_no_information_but_as_independent_images_they_would():
    rng = np.random.default_rng(3)
    # images far apart in difficulty, so the images (not the seeds) decide the width
    errors = (rng.random((4, 200)) < _expit(rng.normal(-1.5, 4.0, 200))).astype(float)
    original = mean_error(errors)
    copies = np.repeat(errors, 5, axis=1)
    clustered = mean_error(copies, groups=np.repeat(np.arange(200), 5))
    naive = mean_error(copies)

    assert clustered.var_images == pytest.approx(original.var_images)
    assert (clustered.low, clustered.high) == pytest.approx((original.low, original.high))
    assert naive.var_images < original.var_images / 4
    assert naive.high - naive.low < original.high - original.low


SEED_SPREAD = 0.2
"""Sd of each run's random effect on the logit of every image's error."""


def _population(rng: np.random.Generator, clusters: int = 50_000) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits of baseline A and of B for clusters of 3 images, and the true mean B - A over images and seeds."""
    logit_a = rng.normal(-1.8, 1.2, (clusters, 1)) + rng.normal(0, 0.6, (clusters, 3))
    logit_b = logit_a + rng.normal(-0.25, 0.6, (clusters, 1)) + rng.normal(0, 0.3, (clusters, 3))
    nodes, weights = np.polynomial.hermite_e.hermegauss(24)  # expectation over the seed's normal effect
    weights = weights / weights.sum()
    expected_a = _expit(logit_a[..., None] + SEED_SPREAD * nodes) @ weights
    expected_b = _expit(logit_b[..., None] + SEED_SPREAD * nodes) @ weights
    return logit_a, logit_b, float((expected_b - expected_a).mean())


def _coverage(rng: np.random.Generator, seeds: int, clusters: int = 140, experiments: int = 400) -> float:
    """The share of simulated experiments whose 95% interval for B - A holds the population's true difference."""
    logit_a, logit_b, truth = _population(rng)
    picked = rng.integers(0, logit_a.shape[0], (experiments, clusters))
    shape = (experiments, seeds, 1)
    # each run of each network has its own seed effect; each (run, image) its own Bernoulli draw
    p_a = _expit(logit_a[picked].reshape(experiments, 1, -1) + SEED_SPREAD * rng.standard_normal(shape))
    p_b = _expit(logit_b[picked].reshape(experiments, 1, -1) + SEED_SPREAD * rng.standard_normal(shape))
    errors_a, errors_b = rng.random(p_a.shape) < p_a, rng.random(p_b.shape) < p_b
    groups = np.repeat(np.arange(clusters), 3)
    results = [paired_difference(errors_b[k], errors_a[k], groups) for k in range(experiments)]
    return float(np.mean([r.low <= truth <= r.high for r in results]))


def test_the_95_percent_interval_covers_the_true_difference_in_simulated_experiments():
    assert 0.91 <= _coverage(np.random.default_rng(4), seeds=5) <= 0.99
    assert _coverage(np.random.default_rng(5), seeds=2) >= 0.88


@pytest.fixture
def both_parts() -> Estimate:
    """A difference where seeds and images both matter: 5 seeds, 600 images in clusters of 3."""
    return Estimate(
        estimate=-0.004,
        low=None,
        high=None,
        p_value=None,
        seeds=5,
        images=600,
        clusters=200,
        var_seeds=3e-5,
        var_images=2e-5,
        df=None,
    )


def test_seeds_needed_is_the_first_count_that_reaches_the_half_width(both_parts: Estimate):
    r = both_parts
    previous = 2
    for half in (0.03, 0.02, 0.015, 0.012, 0.01):
        seeds = seeds_needed(r, half)
        assert seeds is not None and seeds >= previous
        assert _planned_half_width(r.var_seeds * r.seeds / seeds, seeds, r.var_images, r.clusters) <= half
        if seeds > 2:
            assert _planned_half_width(r.var_seeds * r.seeds / (seeds - 1), seeds - 1, r.var_images, r.clusters) > half
        previous = seeds
    assert seeds_needed(r, 1.0) == 2
    # endless seeds leave the image part, about 1.96 * sqrt(2e-5) = 0.0088
    assert seeds_needed(r, 0.008) is None


def test_images_needed_is_where_the_half_width_drops_to_the_target(both_parts: Estimate):
    r = both_parts
    previous = 0
    for half in (0.03, 0.02, 0.018, 0.017):
        images = images_needed(r, half)
        assert images is not None and images >= previous

        def width(n: int) -> float:
            return _planned_half_width(r.var_seeds, r.seeds, r.var_images * r.images / n, n / 3)

        assert width(images) <= half < width(images - 1)
        previous = images
    # endless images leave the seed part, t(4) * sqrt(3e-5) = 0.0152
    assert images_needed(r, 0.015) is None
    assert images_needed(mean_error(np.ones((1, 10))), 0.01) is None


def _consistent(estimate: float, var_seeds: float, var_images: float, seeds: int = 5, images: int = 2000) -> Estimate:
    """A difference whose interval and p-value follow from its variances (every image its own cluster)."""
    half = _planned_half_width(var_seeds, seeds, var_images, images)
    variance = var_seeds + var_images
    df = variance**2 / (var_seeds**2 / (seeds - 1) + var_images**2 / (images - 1))
    p_value = float(2 * scipy_stats.t.sf(abs(estimate) / math.sqrt(variance), df))
    low, high = estimate - half, estimate + half
    return Estimate(estimate, low, high, p_value, seeds, images, images, var_seeds, var_images, df)


def test_verdicts_say_lowers_raises_or_how_much_more_data_would_resolve():
    design = {"seeds": 5, "images": 2000, "clusters": 2000, "var_seeds": 1e-5, "var_images": 1e-5, "df": 30.0}
    lower = Estimate(-0.012, -0.020, -0.004, 0.004, **design)
    assert verdict("resnet18 + CBAM", "resnet18", lower) == (
        "resnet18 + CBAM lowers top-1 error by 1.2 points [0.4, 2.0] against resnet18 "
        "over 5 seeds and 2000 validation images (p = 0.004)"
    )
    higher = Estimate(0.012, 0.004, 0.020, 0.0002, **design)
    assert verdict("resnet18 + SE", "resnet18", higher, metric="top-5 error") == (
        "resnet18 + SE raises top-5 error by 1.2 points [0.4, 2.0] against resnet18 "
        "over 5 seeds and 2000 validation images (p < 0.001)"
    )

    narrow = _consistent(0.001, 1e-6, 1e-6)
    assert verdict("b", "a", narrow) == (
        "no difference in top-1 error detectable between b and a at this size: [-0.2, +0.4] points (p = 0.49), "
        "so an effect larger than 0.4 points is unlikely; differences larger than 0.5 points would have been detected"
    )
    seeds_matter = _consistent(0.0015, 2e-5, 2e-6)
    assert images_needed(seeds_matter, 0.005) is None
    assert verdict("b", "a", seeds_matter) == (
        "no difference in top-1 error detectable between b and a at this size: [-1.1, +1.4] points (p = 0.76), "
        f"so an effect larger than 1.4 points is unlikely; about {seeds_needed(seeds_matter, 0.005)} seeds would "
        "resolve 0.5 points"
    )
    both = _consistent(0.0015, 3e-6, 5e-6)
    seeds, images = seeds_needed(both, 0.005), images_needed(both, 0.005)
    assert seeds is not None and seeds > 5 and images is not None and images > 2000
    assert verdict("b", "a", both).endswith(
        f"; about {seeds} seeds or about {images} validation images would resolve 0.5 points"
    )
    neither = _consistent(0.0015, 2e-5, 1e-4)  # neither seeds alone nor images alone: both, planned together
    plan = seeds_and_images_needed(neither, 0.005)
    assert seeds_needed(neither, 0.005) is None and images_needed(neither, 0.005) is None and plan is not None
    assert verdict("b", "a", neither).endswith(
        f"; about {plan[0]} seeds with about {plan[1]} validation images would resolve 0.5 points"
    )
    seeds, images = plan
    growth = images / neither.images  # the planned design's half-width, written out: within 0.5 points
    var_images, clusters = neither.var_images / growth, 2000 * growth
    assert _planned_half_width(neither.var_seeds * 5 / seeds, seeds, var_images, clusters) <= 0.005
    assert _planned_half_width(neither.var_seeds * 5 / (seeds - 1), seeds - 1, var_images, clusters) > 0.005
    if growth > 2:  # the smallest growth that works: half of it resolves with no number of seeds
        half_grown = (neither.var_images * 2 / growth, 1000 * growth)
        assert _planned_half_width(neither.var_seeds * 5 / 10_000, 10_000, *half_grown) > 0.005
    hopeless = _consistent(0.0015, 2e-3, 1e-2)
    assert seeds_and_images_needed(hopeless, 0.005) is None
    assert verdict("b", "a", hopeless).endswith(
        "; more seeds and more validation images than planned here would be needed to resolve 0.5 points"
    )

    one_seed = paired_difference([[0, 0, 1, 0]], [[1, 1, 1, 0]])
    assert verdict("b", "a", one_seed) == (
        "b against a, top-1 error over 1 seed and 4 validation images: intervals need at least 2 seeds; "
        "the difference is -50.0 points"
    )


def test_one_seed_or_one_cluster_gives_what_can_be_measured_without_raising():
    errors = np.array([[1, 0, 0, 1, 0]])
    alone = mean_error(errors)
    assert (alone.estimate, alone.low, alone.high, alone.p_value, alone.df) == (0.4, None, None, None, None)
    assert json.loads(json.dumps(alone.to_dict(), allow_nan=False))["var_seeds"] is None
    assert seeds_needed(alone, 0.01) is None

    one_cluster = mean_error(np.tile(errors, (3, 1)) * [[1], [0], [1]], groups=[4] * 5)
    assert one_cluster.clusters == 1 and one_cluster.var_images == 0.0
    assert one_cluster.df == pytest.approx(2.0)
    assert images_needed(one_cluster, 0.5) is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mean_error([0, 1, 1]), "must be 2-D"),
        (lambda: mean_error(np.zeros((2, 3, 4))), "must be 2-D"),
        (lambda: mean_error(np.zeros((3, 0))), "no validation images"),
        (lambda: mean_error(np.zeros((0, 3))), "no runs"),
        (lambda: mean_error([[0, np.nan]]), "NaN"),
        (lambda: paired_difference(np.zeros((3, 4)), np.zeros((3, 5))), "same shape"),
        (lambda: paired_difference(np.zeros((3, 4)), np.zeros((3, 4)), groups=[0, 0, 1]), "one cluster per image"),
        (lambda: mean_error(np.zeros((3, 4)), level=1.5), "level"),
        (lambda: seeds_needed(mean_error(np.zeros((3, 4))), 0.0), "half_width"),
        (lambda: images_needed(mean_error(np.zeros((3, 4))), -1.0), "half_width"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
