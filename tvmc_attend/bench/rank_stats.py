"""How well a cost ranks candidates against a clock: rank correlation, top-1 regret, and the
calibration of the cost's terms on timed candidates. numpy and the cost's roofline (no TVM)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvmc_attend.device.counting.cost import roofline


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):  # ties share their mean rank
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


# Costs within this share of the lowest are a tie: the same schedule sampled twice, or two
# whose code differs only in addresses, count within a fraction of a percent of each other
TIE = 0.01


def top1_regret(timed: list[float], cost: list[float]) -> float:
    """How much slower the candidate the cost ranks first runs than the fastest one (0.1 =
    10 % slower). Candidates tied for first (within ``TIE``) count by their mean time: what
    a tuner picking among them by chance should expect."""
    best_cost = min(cost)
    tied = [t for t, c in zip(timed, cost, strict=True) if c <= best_cost * (1 + TIE)]
    return float(np.mean(tied)) / min(timed) - 1.0


# exposed_miss values the calibration tries: from misses fully hidden to each miss costing
# twice its latency (conflicting streams)
EXPOSED_GRID = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                1.5, 2.0)


@dataclass(frozen=True)
class Calibration:
    """timed cycles ~= compute_scale x sum over blocks of max(compute, exposed_miss x raw
    miss cycles): the ``exposed_miss`` of ``EXPOSED_GRID`` under which the cost is most
    nearly proportional to the time (least spread of log(time / cost)), and the scale."""

    compute_scale: float
    exposed_miss: float
    median_error: float  # median |scale x cost - timed| / timed

    def as_json(self) -> dict[str, float]:
        return {"compute_scale": self.compute_scale, "exposed_miss": self.exposed_miss,
                "median_relative_error": self.median_error}


Terms = list[tuple[float, float]]  # per block: (compute cycles, raw miss cycles)


def roofline_cycles(terms: Terms, rest: float, exposed: float) -> float:
    """A candidate's cost from what the rank check keeps of it: the roofline of its blocks
    with misses, plus the compute of the others (``rest``)."""
    return rest + roofline(terms, exposed).cycles


def calibrate(timed_cycles: list[float], terms: list[Terms], rest: list[float]) -> Calibration:
    """Fit ``exposed_miss`` and the scale to timed candidates (see ``Calibration``)."""
    t = np.asarray(timed_cycles, dtype=float)
    best: tuple[float, float, float] | None = None  # spread, exposed, scale
    for exposed in EXPOSED_GRID:
        cost = np.array([roofline_cycles(tm, r, exposed) for tm, r in zip(terms, rest,
                                                                         strict=True)])
        log_ratio = np.log(t / cost)
        spread = float(np.std(log_ratio))
        if best is None or spread < best[0] - 1e-12:
            best = (spread, exposed, float(np.exp(np.median(log_ratio))))
    assert best is not None
    _spread, exposed, scale = best
    cost = np.array([roofline_cycles(tm, r, exposed) for tm, r in zip(terms, rest, strict=True)])
    return Calibration(compute_scale=scale, exposed_miss=exposed,
                       median_error=float(np.median(np.abs(scale * cost - t) / t)))
