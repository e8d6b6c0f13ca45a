"""Error rates of networks trained over several seeds, and their differences, with intervals that keep their coverage.

A comparison has two sources of chance: the seed (initialisation, data order) and the finite validation set. The
runs form a crossed design, seeds x images: `errors[s, i]` is 1 when run `s` gets image `i` wrong. Two networks are
paired by seed index and by image, so a difference is taken cell by cell, `d = errors_b - errors_a` (negative: B
makes fewer errors); a single network is `d = errors`. With S seeds, N images and G clusters of images (several
renderings of one source digit form one cluster; without groups every image is its own), the variance of the grand
mean splits as in a two-way random-effects ANOVA, `sigma_seed^2 / S + sigma_image^2 / N + sigma_residual^2 / (S N)`:

- seed part, `V_seed = var(D_s, ddof=1) / S` from the S per-seed means `D_s`: it estimates the seed term *and* the
  seed x image residual, on S - 1 degrees of freedom;
- image part, `V_images = V_c - V_residual`, floored at 0: `V_c` is the cluster-robust variance of the mean of the
  per-image means over seeds (`G / (G - 1) * sum_g (T_g - n_g * estimate)^2 / N^2`), which holds the image term and
  the residual once more; `V_residual`, the same cluster-robust sum over the seed x cluster residuals, averaged over
  seeds and divided by S - 1, removes it, so the residual is counted once (in the seed part). In a balanced design
  these are the ANOVA mean squares: `V_seed = MS_seed / (S G)`, `V_images = (MS_cluster - MS_residual) / (S G)`.
  Its degrees of freedom are Satterthwaite's for that difference, between 1 and G - 1;
- the interval is `estimate +- sqrt(t(S-1)^2 V_seed + t(df_images)^2 V_images)`, each part with its own t quantile
  (Banerjee's interval for a sum of independently estimated variances). Its coverage is at least the stated level
  whatever the ratio of the parts, and it is exact in both limits: the seed-only t interval when seeds dominate, the
  cluster-robust one when images do. A single Welch-Satterthwaite df for the sum is not used: with 2 or 3 seeds it
  is driven by the *estimated* seed part, so a seed spread that came out small by chance also buys a high df and a
  narrow interval, and coverage drops exactly where the seeds say least (tests/test_stats.py simulates this);
- the p-value of "no difference" is the one of that same interval: 1 - the largest level whose interval still
  holds 0; `df` reports the effective degrees of freedom, those of one t quantile giving the same half-width.

Edge cases: one seed gives no interval (bounds, p-value and df are None, `var_seeds` is NaN), as seed-to-seed
spread cannot be measured from one run. One cluster cannot measure the spread between images: the image part is
taken as 0. When both parts are 0 (every run agrees on every image) the interval is the point itself and the p-value
is 1 for a zero estimate, else 0. Values are fractions (0..1); `verdict` speaks in percentage points.

Planning (`seeds_needed`, `images_needed`, `seeds_and_images_needed`) takes the measured parts as if they were the
truth, scales them to a new design (the pure seed part `V_seed - V_residual` by `S / S'`, the residual by
`S N / (S' N')`, the image part by `N / N'`, its df with the clusters) and recomputes the quantiles. With few seeds the
seed variance itself is known only roughly (from 3 seeds its 80% interval spans a factor of about 20), so
`seeds_needed_range` also gives the plan at both ends of that interval, and `verdict` says so.
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

PLAN_LEVEL = 0.8
"""The confidence of the seed-variance interval whose ends `seeds_needed_range` plans for."""

SMALLEST_P = 1e-12
"""p-values below this are reported as 0 (the root search stops there)."""


def _scipy_stats() -> Any:
    return import_optional("scipy.stats", "compare", "the intervals of cbam.stats")


@dataclass(frozen=True)
class Estimate:
    """A mean error (or a paired difference B - A) with its interval, its parts of variance and the design.

    `var_seeds` is the seed part (with the seed x image residual, `var_residual` of it), `var_images` the image part
    net of the residual; `df_images` the image part's degrees of freedom, `df` the effective ones of the interval.
    """

    estimate: float
    low: float | None
    high: float | None
    p_value: float | None
    seeds: int
    images: int
    clusters: int
    var_seeds: float
    var_images: float
    level: float = 0.95
    var_residual: float = 0.0
    df_images: float = 1.0

    @property
    def half_width(self) -> float | None:
        """Half the interval's width, or None without an interval."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    @property
    def df(self) -> float | None:
        """The effective degrees of freedom: those of the one t quantile that gives the same half-width (between
        the fewer of S - 1 and `df_images`, and endless); None without an interval or when it has no width."""
        half, variance = self.half_width, self.var_seeds + self.var_images
        if half is None or not variance > 0:
            return None
        return _effective_df(half, variance, self.level, float(min(max(self.seeds - 1, 1), self.df_images)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field and `df`, with a NaN (an unmeasured variance) or an endless df as None."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in {**asdict(self), "df": self.df}.items()
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


def image_part(var_c: float, var_residual: float, seeds: int, clusters: int) -> tuple[float, float]:
    """The image part `V_c - V_residual` (floored at 0) and its Satterthwaite df, between 1 and G - 1.

    `var_c` is the variance of the mean over images of the per-image means over seeds (image term + residual / S),
    `var_residual` the residual's share of it; each is taken on G - 1 and (S - 1)(G - 1) degrees of freedom.
    """
    top = max(clusters - 1, 1)
    net = max(var_c - var_residual, 0.0)
    if net == 0:
        return 0.0, float(top)
    denominator = var_c**2 / top + var_residual**2 / (max(seeds - 1, 1) * top)
    return net, float(min(max(net**2 / denominator, 1.0), top))


def _quantile(level: float, df: Any) -> Any:
    return _scipy_stats().t.ppf(0.5 + level / 2, df)


def _half_widths(var_seeds: Any, seeds: Any, var_images: Any, df_images: Any, level: float) -> Any:
    """`sqrt(t(S-1)^2 V_seed + t(df_images)^2 V_images)` element-wise (Banerjee), 0 where both parts are 0."""
    var_seeds, var_images = np.asarray(var_seeds, dtype=np.float64), np.asarray(var_images, dtype=np.float64)
    seed_df = np.maximum(np.asarray(seeds, dtype=np.float64) - 1, 1)
    square = _quantile(level, seed_df) ** 2 * var_seeds + _quantile(level, np.maximum(df_images, 1)) ** 2 * var_images
    return np.sqrt(square)


def _p_value(estimate: float, var_seeds: float, seeds: int, var_images: float, df_images: float) -> float:
    """1 - the largest level whose interval still holds 0 (the p-value that agrees with the interval)."""
    if estimate == 0:
        return 1.0
    optimize = import_optional("scipy.optimize", "compare", "the p-values of cbam.stats")

    def excess(level: float) -> float:
        return float(_half_widths(var_seeds, seeds, var_images, df_images, level)) - abs(estimate)

    if excess(1 - SMALLEST_P) < 0:
        return 0.0
    return float(1 - optimize.brentq(excess, 0.0, 1 - SMALLEST_P, xtol=SMALLEST_P / 10))


def _effective_df(half: float, variance: float, level: float, fewest: float) -> float:
    """The df of the one t quantile that gives the same half-width: between the parts' `fewest` df and endless."""
    optimize = import_optional("scipy.optimize", "compare", "the intervals of cbam.stats")
    ratio = half / math.sqrt(variance)
    if ratio <= float(_quantile(level, 1e9)):
        return math.inf
    low = fewest * (1 - 1e-9)
    if ratio >= float(_quantile(level, low)):
        return fewest
    return float(optimize.brentq(lambda df: float(_quantile(level, df)) - ratio, low, 1e9, rtol=1e-10))


def interval(
    estimate: float,
    per_seed: ArrayLike,
    var_c: float,
    var_residual: float,
    *,
    images: int,
    clusters: int,
    level: float = 0.95,
    test_zero: bool = False,
) -> Estimate:
    """The module docstring's interval from its ingredients, whatever made them: the per-seed values `D_s` (the
    seed part) and the image variances `var_c`, `var_residual` (analytic for errors, a bootstrap for mAP)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    values = np.asarray(per_seed, dtype=np.float64)
    seeds = int(values.size)
    var_images, df_images = image_part(var_c, var_residual, seeds, clusters)
    design = {"seeds": seeds, "images": images, "clusters": clusters, "var_images": var_images, "level": level,
              "var_residual": var_residual, "df_images": df_images}  # fmt: skip
    if seeds < 2:
        return Estimate(estimate, None, None, None, var_seeds=math.nan, **design)
    var_seeds = float(np.var(values, ddof=1) / seeds)
    variance = var_seeds + var_images
    if variance == 0:
        p_value = (1.0 if estimate == 0 else 0.0) if test_zero else None
        return Estimate(estimate, estimate, estimate, p_value, var_seeds=var_seeds, **design)
    half = float(_half_widths(var_seeds, seeds, var_images, df_images, level))
    p_value = _p_value(estimate, var_seeds, seeds, var_images, df_images) if test_zero else None
    return Estimate(estimate, estimate - half, estimate + half, p_value, var_seeds=var_seeds, **design)


def _cluster_robust(totals: NDArray[np.float64], clusters: int, images: int) -> Any:
    """`G / (G - 1) * sum_g totals_g^2 / N^2` over the last axis: the variance of a mean of clustered deviations."""
    return clusters / (clusters - 1) * np.sum(totals**2, axis=-1) / images**2


def _estimate(d: NDArray[np.float64], cluster: NDArray[np.intp], level: float, test_zero: bool) -> Estimate:
    """The method of the module docstring applied to the per-cell values `d` (seeds x images)."""
    seeds, images = d.shape
    clusters = int(cluster.max()) + 1
    estimate = float(d.mean())
    per_seed = d.mean(axis=1)
    var_c = var_residual = 0.0
    if clusters >= 2:
        sizes = np.bincount(cluster, minlength=clusters).astype(np.float64)
        totals = np.stack([np.bincount(cluster, weights=row, minlength=clusters) for row in d])  # seeds x clusters
        mean_totals = totals.mean(axis=0)
        var_c = float(_cluster_robust(mean_totals - sizes * estimate, clusters, images))
        if seeds >= 2:
            residuals = totals - mean_totals - np.outer(per_seed - estimate, sizes)
            var_residual = float(_cluster_robust(residuals, clusters, images).sum() / (seeds * (seeds - 1)))
    return interval(estimate, per_seed, var_c, var_residual, images=images, clusters=clusters, level=level,
                    test_zero=test_zero)  # fmt: skip


def mean_error(errors: ArrayLike, groups: ArrayLike | None = None, level: float = 0.95) -> Estimate:
    """One network's mean error over seeds and images, with its interval (no p-value: "error is 0" is no question).

    Any per-image score in 0..1 works the same way (the pointing game's hits, for one).
    """
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


def jackknife_interval(
    per_seed: ArrayLike, leaving_out: ArrayLike, *, images: int, level: float = 0.95, test_zero: bool = False
) -> Estimate:
    """The interval of a mean over seeds of a score that is no mean over images (mAP), its image part from a
    delete-a-group jackknife: `per_seed[s]` is seed s's score (or a paired difference), `leaving_out[s, k]` the
    same with fold k of the images left out, the folds the same for every seed and made of whole clusters.

    `V_c` is the jackknife variance of the mean over seeds, `(K - 1) / K * sum_k (m_(k) - mean_k m_(k))^2`; each
    seed's own jackknife variance holds the image term and the whole residual, so their mean less `V_c`, over
    S - 1, is the residual's share of `V_c`, as in the module docstring. The image part's df is at most K - 1
    (`clusters` of the result counts the folds).
    """
    values = np.asarray(per_seed, dtype=np.float64).reshape(-1)
    folds = np.asarray(leaving_out, dtype=np.float64)
    if folds.ndim != 2 or folds.shape[0] != values.size:
        raise ValueError(f"leaving_out must be seeds x folds ({values.size} seeds), got shape {folds.shape}")
    if folds.shape[1] < 2:
        raise ValueError(f"a jackknife needs at least 2 folds, got {folds.shape[1]}")
    if not (np.isfinite(values).all() and np.isfinite(folds).all()):
        raise ValueError("per_seed or leaving_out holds NaN or infinite values")
    k = folds.shape[1]

    def spread(x: NDArray[np.float64]) -> Any:
        return (k - 1) / k * np.sum((x - x.mean(axis=-1, keepdims=True)) ** 2, axis=-1)

    var_c = float(spread(folds.mean(axis=0)))
    seeds = values.size
    var_residual = max(float(spread(folds).mean()) - var_c, 0.0) / (seeds - 1) if seeds >= 2 else 0.0
    return interval(float(values.mean()), values, var_c, var_residual, images=images, clusters=k, level=level,
                    test_zero=test_zero)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Planning


def _check_half_width(half_width: float) -> None:
    if not half_width > 0:
        raise ValueError(f"half_width must be positive, got {half_width}")


def _planned(result: Estimate, seeds: Any, growth: Any = 1.0, seed_scale: float = 1.0) -> Any:
    """Planned half-widths for `seeds` seeds and a validation set `growth` times larger (clusters of the same
    size), the pure seed variance scaled by `seed_scale` (1: as measured)."""
    residual = min(result.var_residual, result.var_seeds)
    pure = (result.var_seeds - residual) * seed_scale
    seeds = np.asarray(seeds, dtype=np.float64)
    var_seeds = (pure + residual / np.asarray(growth)) * result.seeds / seeds
    df_images = np.minimum(result.df_images * np.asarray(growth), result.clusters * np.asarray(growth) - 1)
    return _half_widths(var_seeds, seeds, result.var_images / np.asarray(growth), df_images, result.level)


def _fewest_seeds(result: Estimate, half_width: float, growth: float = 1.0, seed_scale: float = 1.0) -> int | None:
    """The fewest seeds (2..MAX_SEEDS) whose planned interval is at most +-`half_width`; else None."""
    planned = np.arange(2, MAX_SEEDS + 1)
    hits = np.flatnonzero(_planned(result, planned, growth, seed_scale) <= half_width)
    return int(planned[hits[0]]) if hits.size else None


def seeds_needed(result: Estimate, half_width: float) -> int | None:
    """The fewest seeds (2..10000) whose planned interval is at most +-`half_width`, the images kept; else None.

    None as well for a result of one seed, whose seed-to-seed spread is unknown.
    """
    _check_half_width(half_width)
    return _fewest_seeds(result, half_width) if result.seeds >= 2 else None


def seeds_needed_range(
    result: Estimate, half_width: float, level: float = PLAN_LEVEL
) -> tuple[int | None, int | None] | None:
    """`seeds_needed` at the two ends of the `level` interval of the pure seed variance (a chi-square on S - 1 df):
    (fewest, most), None for "more than 10000"; None for a result of one seed."""
    _check_half_width(half_width)
    if result.seeds < 2:
        return None
    chi2, df = _scipy_stats().chi2, result.seeds - 1
    small, large = df / chi2.ppf(0.5 + level / 2, df), df / chi2.ppf(0.5 - level / 2, df)
    return _fewest_seeds(result, half_width, seed_scale=small), _fewest_seeds(result, half_width, seed_scale=large)


def images_needed(result: Estimate, half_width: float) -> int | None:
    """The validation images whose planned interval is at most +-`half_width`, the seeds kept; else None.

    Clusters keep their mean size. None when endless images (the pure seed part alone) would still be too wide,
    and for a result without an interval or without two clusters (the spread between images is then unknown). Found
    by bisection: at the answer the planned half-width is at most `half_width`, with one image fewer it is more.
    """
    _check_half_width(half_width)
    if result.seeds < 2 or result.clusters < 2:
        return None
    per_cluster = result.images / result.clusters

    def width(images: int) -> float:
        return float(_planned(result, result.seeds, images / result.images))

    low = math.ceil(2 * per_cluster)  # the fewest images that still make two clusters
    if float(_planned(result, result.seeds, 1e12)) > half_width:
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


# ---------------------------------------------------------------------------------------------
# Verdicts and tables


def format_points(estimate: Estimate | None, sign: bool = False) -> str:
    """`12.34 [11.02, 13.66]` in percentage points, bounds clipped to what a rate (0..100) or a difference of rates
    (-100..100) can be; without bounds (one seed), the estimate alone; "" for None."""
    if estimate is None:
        return ""
    fmt, lowest = ("+.2f", -100.0) if sign else (".2f", 0.0)
    if estimate.low is None or estimate.high is None:
        return format(100 * estimate.estimate, fmt)
    low, high = max(lowest, 100 * estimate.low), min(100.0, 100 * estimate.high)
    return f"{100 * estimate.estimate:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _points(fraction: float, sign: bool = False) -> str:
    return f"{100 * fraction:+.1f}" if sign else f"{100 * fraction:.1f}"


def _format_p(p_value: float) -> str:
    if p_value < 0.001:
        return "p < 0.001"
    return f"p = {p_value:.3f}" if p_value < 0.01 else f"p = {p_value:.2f}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _seed_range(result: Estimate, resolve: float) -> str:
    """How far the seed plan moves with the seed spread it rests on, e.g. " (3 to 60 ... from 3 seeds)"."""
    span = seeds_needed_range(result, resolve)
    if span is None:
        return ""
    fewest, most = (str(n) if n is not None else f"over {MAX_SEEDS}" for n in span)
    if fewest == most:
        return ""
    return (
        f" ({fewest} to {most} for a seed spread anywhere in its {100 * PLAN_LEVEL:.0f}% interval, "
        f"measured from {_plural(result.seeds, 'seed')})"
    )


def plan_sentence(result: Estimate, resolve: float) -> str:
    """What more data would resolve `resolve` (a fraction), with how uncertain the seed plan is."""
    target = f"{_points(resolve)} points"
    if result.half_width is not None and result.half_width <= resolve:
        return f"differences larger than {target} would have been detected"
    seeds, images = seeds_needed(result, resolve), images_needed(result, resolve)
    options = [f"about {seeds} seeds{_seed_range(result, resolve)}"] if seeds is not None else []
    options += [f"about {images} validation images"] if images is not None else []
    if options:
        return f"{' or '.join(options)} would resolve {target} if the measured spreads hold"
    both = seeds_and_images_needed(result, resolve)
    if both is not None:
        return (
            f"about {both[0]} seeds with about {both[1]} validation images would resolve {target} "
            "if the measured spreads hold"
        )
    return f"more seeds and more validation images than planned here would be needed to resolve {target}"


def verdict(
    name: str, baseline: str, result: Estimate, metric: str = "top-1 error", resolve: float = 0.005, unit: str = ""
) -> str:
    """One sentence on `result` (`name` minus `baseline`) that a person can act on, in percentage points.

    `metric` names what was measured; a higher-is-better metric (mAP) reads the same, "raises" then being good.
    `unit` names what the interval is over besides seeds ("validation images" by default).
    """
    unit = unit or "validation image"
    design = f"{_plural(result.seeds, 'seed')} and {_plural(result.images, unit)}"
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
    bound = max(-result.low, result.high)
    return (
        f"no difference in {metric} detectable between {name} and {baseline} at this size: "
        f"[{_points(result.low, sign=True)}, {_points(result.high, sign=True)}] points{p_text}, "
        f"so an effect larger than {_points(bound)} points is unlikely; {plan_sentence(result, resolve)}"
    )
