"""Error rates of networks trained over several seeds, and their differences, with intervals that are honest.

A comparison has two sources of chance: the seed (initialisation, data order) and the finite validation set. The
runs form a crossed design, seeds x images: `errors[s, i]` is 1 when run `s` gets image `i` wrong. Two networks are
paired by seed index and by image, so a difference is taken cell by cell, `d = errors_b - errors_a` (negative: B
makes fewer errors); a single network is `d = errors`. With S seeds, N images and G clusters of images:

- the estimate is the mean of `d` over all cells;
- seed part: the S per-seed means `D_s` vary from seed to seed; `V_seed = var(D_s, ddof=1) / S`;
- image part: the per-image means over seeds `c_i` are summed per cluster (`T_g`, of `n_g` images) and the
  cluster-robust variance of a mean is taken, `V_images = G / (G - 1) * sum_g (T_g - n_g * estimate)^2 / N^2`.
  A cluster (several renderings of one source digit) is one unit, as its images are not independent; with every
  image its own cluster this is exactly `var(c, ddof=1) / N`;
- `V = V_seed + V_images` (method of moments). Each part also holds the seed x image residual, so `V` counts it
  twice and errs on the wide side by `var(residual) / (S * N)`: little when seeds or images dominate, more when two
  networks mostly disagree by chance, image by image;
- degrees of freedom by Welch-Satterthwaite, `V^2 / (V_seed^2 / (S - 1) + V_images^2 / (G - 1))`, a part that is
  zero left out; the interval is `estimate +- t(df) * sqrt(V)` and the two-sided p-value of "no difference" is
  `2 * t.sf(|estimate| / sqrt(V), df)`.

Edge cases: one seed gives no interval (bounds, p-value and df are None, `var_seeds` is NaN), as seed-to-seed
spread cannot be measured from one run. One cluster cannot measure the spread between images: `V_images` is taken
as 0. When `V` is 0 (every run agrees on every image) the interval is the point itself and the p-value is 1 for a
zero estimate, else 0. Values are fractions (0..1); `verdict` speaks in percentage points.

Planning (`seeds_needed`, `images_needed`) scales one part (`V_seed * S / S'`, or `V_images * N / N'` with
clusters of the same mean size) and recomputes the degrees of freedom for the new design, since with few seeds
the t quantile matters as much as the variance. `seeds_needed` is the first S' in 2..10000 that reaches the target.
More images shift the variance towards the seed part and so its df towards S - 1, which can widen the t quantile
faster than the variance shrinks; `images_needed` therefore answers None unless endless images (the seed part alone,
at S - 1 df) would beat the target, and otherwise the image count at which the half-width crosses it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cbam.extras import import_optional

MAX_SEEDS = 10_000
"""The most seeds `seeds_needed` considers."""


def _t_distribution() -> Any:
    return import_optional("scipy.stats", "compare", "the intervals of cbam.stats").t


@dataclass(frozen=True)
class Estimate:
    """A mean error (or a paired difference B - A) with its interval, its parts of variance and the design."""

    estimate: float
    low: float | None
    high: float | None
    p_value: float | None
    seeds: int
    images: int
    clusters: int
    var_seeds: float
    var_images: float
    df: float | None
    level: float = 0.95

    @property
    def half_width(self) -> float | None:
        """Half the interval's width, or None without an interval."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, with a NaN (an unmeasured variance) as None."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in asdict(self).items()
        }


def _as_errors(errors: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(errors, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (seeds x images), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no runs (0 seeds)")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has no validation images (0 columns)")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _cluster_index(groups: ArrayLike | None, images: int) -> NDArray[np.intp]:
    """Each image's cluster as 0..G-1; every image its own cluster without `groups`."""
    if groups is None:
        return np.arange(images)
    labels = np.asarray(groups)
    if labels.shape != (images,):
        raise ValueError(f"groups must give one cluster per image: {images} images, groups of shape {labels.shape}")
    return np.unique(labels, return_inverse=True)[1].reshape(images)


def _satterthwaite(var_seeds: Any, seeds: Any, var_images: Any, clusters: Any) -> Any:
    """Welch-Satterthwaite degrees of freedom of `var_seeds + var_images` (element-wise); a zero part drops out."""
    var_seeds, var_images = np.asarray(var_seeds, dtype=np.float64), np.asarray(var_images, dtype=np.float64)
    seed_term = np.where(var_seeds > 0, var_seeds**2 / np.maximum(np.asarray(seeds) - 1, 1), 0.0)
    image_term = np.where(var_images > 0, var_images**2 / np.maximum(np.asarray(clusters) - 1, 1), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (var_seeds + var_images) ** 2 / (seed_term + image_term)


def _half_widths(var_seeds: Any, seeds: Any, var_images: Any, clusters: Any, level: float) -> Any:
    """`t(level, df) * sqrt(V)` for designs given element-wise; 0 where V is 0."""
    variance = np.asarray(var_seeds + var_images, dtype=np.float64)
    df = _satterthwaite(var_seeds, seeds, var_images, clusters)
    quantile = _t_distribution().ppf(0.5 + level / 2, np.where(variance > 0, df, 1.0))
    return np.where(variance > 0, quantile * np.sqrt(variance), 0.0)


def _estimate(d: NDArray[np.float64], cluster: NDArray[np.intp], level: float, test_zero: bool) -> Estimate:
    """The method of the module docstring applied to the per-cell values `d`."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    seeds, images = d.shape
    clusters = int(cluster.max()) + 1
    estimate = float(d.mean())
    if clusters >= 2:
        totals = np.bincount(cluster, weights=d.mean(axis=0), minlength=clusters)
        sizes = np.bincount(cluster, minlength=clusters)
        var_images = float(clusters / (clusters - 1) * np.sum((totals - sizes * estimate) ** 2) / images**2)
    else:
        var_images = 0.0
    design = {"seeds": seeds, "images": images, "clusters": clusters, "var_images": var_images, "level": level}
    if seeds < 2:
        return Estimate(estimate, None, None, None, var_seeds=math.nan, df=None, **design)
    var_seeds = float(np.var(d.mean(axis=1), ddof=1) / seeds)
    variance = var_seeds + var_images
    if variance == 0:
        p_value = (1.0 if estimate == 0 else 0.0) if test_zero else None
        return Estimate(estimate, estimate, estimate, p_value, var_seeds=var_seeds, df=None, **design)
    df = float(_satterthwaite(var_seeds, seeds, var_images, clusters))
    t = _t_distribution()
    half = float(t.ppf(0.5 + level / 2, df)) * math.sqrt(variance)
    p_value = float(2 * t.sf(abs(estimate) / math.sqrt(variance), df)) if test_zero else None
    return Estimate(estimate, estimate - half, estimate + half, p_value, var_seeds=var_seeds, df=df, **design)


def mean_error(errors: ArrayLike, groups: ArrayLike | None = None, level: float = 0.95) -> Estimate:
    """One network's mean error over seeds and images, with its interval (no p-value: "error is 0" is no question)."""
    array = _as_errors(errors, "errors")
    return _estimate(array, _cluster_index(groups, array.shape[1]), level, test_zero=False)


def paired_difference(
    errors_b: ArrayLike, errors_a: ArrayLike, groups: ArrayLike | None = None, level: float = 0.95
) -> Estimate:
    """Network B's error minus baseline A's, paired by seed and image (negative: B is better), with a p-value."""
    b, a = _as_errors(errors_b, "errors_b"), _as_errors(errors_a, "errors_a")
    if b.shape != a.shape:
        raise ValueError(f"errors_b and errors_a must have the same shape (seeds x images): {b.shape} != {a.shape}")
    return _estimate(b - a, _cluster_index(groups, b.shape[1]), level, test_zero=True)


def _check_half_width(half_width: float) -> None:
    if not half_width > 0:
        raise ValueError(f"half_width must be positive, got {half_width}")


def _fewest_seeds(result: Estimate, half_width: float, growth: float = 1.0) -> int | None:
    """The fewest seeds (2..MAX_SEEDS) whose planned interval, the validation set `growth` times larger (clusters
    of the same size), is at most +-`half_width`; else None."""
    planned = np.arange(2, MAX_SEEDS + 1)
    var_seeds = result.var_seeds * result.seeds / planned
    widths = _half_widths(var_seeds, planned, result.var_images / growth, result.clusters * growth, result.level)
    hits = np.flatnonzero(widths <= half_width)
    return int(planned[hits[0]]) if hits.size else None


def seeds_needed(result: Estimate, half_width: float) -> int | None:
    """The fewest seeds (2..10000) whose planned interval is at most +-`half_width`, the images kept; else None.

    None as well for a result of one seed, whose seed-to-seed spread is unknown.
    """
    _check_half_width(half_width)
    return _fewest_seeds(result, half_width) if result.seeds >= 2 else None


def images_needed(result: Estimate, half_width: float) -> int | None:
    """The validation images whose planned interval is at most +-`half_width`, the seeds kept; else None.

    Clusters keep their mean size. None when the seed part alone (the limit of endless images) is too wide, and for
    a result without an interval or without two clusters (the spread between images is then unknown). The answer
    is found by bisection: at it the planned half-width is at most `half_width`, with one image fewer it is more.
    """
    _check_half_width(half_width)
    if result.seeds < 2 or result.clusters < 2:
        return None
    per_cluster = result.images / result.clusters

    def width(images: int) -> float:
        clusters = images / per_cluster
        var_images = result.var_images * result.images / images
        return float(_half_widths(result.var_seeds, result.seeds, var_images, clusters, result.level))

    low = math.ceil(2 * per_cluster)  # the fewest images that still make two clusters
    limit = float(_half_widths(result.var_seeds, result.seeds, 0.0, 2, result.level))
    if result.var_images == 0:  # images do not move the interval
        return low if limit <= half_width else None
    if limit >= half_width:
        return None
    if width(low) <= half_width:
        return low
    high = max(low + 1, result.images)
    while width(high) > half_width:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if width(middle) <= half_width else (middle, high)
    return high


def seeds_and_images_needed(result: Estimate, half_width: float) -> tuple[int, int] | None:
    """The fewest seeds that, with the validation set grown 2, 4, 8 or 16 times (the smallest growth that
    works), give a planned interval of at most +-`half_width`, and that many images; None when none does."""
    _check_half_width(half_width)
    if result.seeds < 2 or result.clusters < 2:
        return None
    for growth in (2, 4, 8, 16):
        seeds = _fewest_seeds(result, half_width, growth)
        if seeds is not None:
            return seeds, result.images * growth
    return None


def _points(fraction: float, sign: bool = False) -> str:
    return f"{100 * fraction:+.1f}" if sign else f"{100 * fraction:.1f}"


def _format_p(p_value: float) -> str:
    if p_value < 0.001:
        return "p < 0.001"
    return f"p = {p_value:.3f}" if p_value < 0.01 else f"p = {p_value:.2f}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def verdict(name: str, baseline: str, result: Estimate, metric: str = "top-1 error", resolve: float = 0.005) -> str:
    """One sentence on `result` (`name` minus `baseline`) that a person can act on, in percentage points."""
    design = f"{_plural(result.seeds, 'seed')} and {_plural(result.images, 'validation image')}"
    if result.low is None or result.high is None:
        return (
            f"{name} against {baseline}, {metric} over {design}: intervals need at least 2 seeds; "
            f"the difference is {_points(result.estimate, sign=True)} points"
        )
    p_text = "" if result.p_value is None else f" ({_format_p(result.p_value)})"
    if result.high < 0:
        return (
            f"{name} lowers {metric} by {_points(-result.estimate)} points "
            f"[{_points(-result.high)}, {_points(-result.low)}] against {baseline} over {design}{p_text}"
        )
    if result.low > 0:
        return (
            f"{name} raises {metric} by {_points(result.estimate)} points "
            f"[{_points(result.low)}, {_points(result.high)}] against {baseline} over {design}{p_text}"
        )
    target = f"{_points(resolve)} points"
    if result.half_width is not None and result.half_width <= resolve:
        plan = f"differences larger than {target} would have been detected"
    else:
        seeds, images = seeds_needed(result, resolve), images_needed(result, resolve)
        options = [f"about {seeds} seeds"] if seeds is not None else []
        options += [f"about {images} validation images"] if images is not None else []
        both = seeds_and_images_needed(result, resolve) if not options else None
        if options:
            plan = f"{' or '.join(options)} would resolve {target}"
        elif both is not None:
            plan = f"about {both[0]} seeds with about {both[1]} validation images would resolve {target}"
        else:
            plan = f"more seeds and more validation images than planned here would be needed to resolve {target}"
    bound = max(-result.low, result.high)
    return (
        f"no difference in {metric} detectable between {name} and {baseline} at this size: "
        f"[{_points(result.low, sign=True)}, {_points(result.high, sign=True)}] points{p_text}, "
        f"so an effect larger than {_points(bound)} points is unlikely; {plan}"
    )
