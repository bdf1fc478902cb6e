"""Seed statistics for the leaderboard: mean and a 95% confidence interval over seeds.

The interval is Student's t interval of the mean: ``mean +/- t(0.975, n-1) * s / sqrt(n)`` with ``s``
the sample standard deviation (ddof=1) of the ``n`` seeds that finished with status ``ok``. With
``n = 1`` no interval exists and none is shown. ``t(0.975, df)`` comes from the exact table for
``df <= 30`` and from the Cornish-Fisher expansion of the t quantile in the normal quantile above
(error below 1e-7 there), so no SciPy is needed.
"""

from __future__ import annotations

import math

import numpy as np

#: t(0.975, df) for df = 1..30 (standard table values)
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (NaN for df < 1)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z, d = _Z975, float(df)
    return (z + (z**3 + z) / (4 * d) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * d**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * d**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * d**4))


def ci_halfwidth(std: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Vectorised half-width of the 95% t interval; NaN where n < 2 or std is NaN."""
    std = np.asarray(std, dtype=float)
    n = np.asarray(n, dtype=float)
    t = np.array([t975(int(k) - 1) if k >= 2 else math.nan for k in n.ravel()]).reshape(n.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return t * std / np.sqrt(n)


def mean_ci(values: list[float] | np.ndarray) -> tuple[float, float, int]:
    """(mean, 95% CI half-width, n) of the finite values; half-width NaN when n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    return float(x.mean()), float(t975(n - 1) * x.std(ddof=1) / math.sqrt(n)), n
