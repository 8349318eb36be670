"""Data scaling (the paper's section on data efficiency): the fit w = alpha * log N + C and the subsets.

Pure functions (numpy; scipy for t quantiles, matplotlib for the plot), no files and no models; the
experiment that trains and evaluates one model per size is hb_jax/pipeline/scaling.py
(`python launch/run.py --stage=scaling`).

  fit_log_scaling(ns, scores)        ordinary least squares of score on log N: alpha, C, their standard
                                     errors, R^2 and Student-t intervals (default 95%)
  subset_order(ids, seed)            a seeded permutation that depends only on the ids, not on file order
  nested_subsets(items, sizes, seed) {N: the first N items of that permutation}, so N1 < N2 gives N1 ⊂ N2
  plot_scaling(ns, scores, fit)      PNG bytes: the points, the fitted line and its confidence band

The paper reports alpha for 7B models trained on N in {3,200 ... 51,200} examples (Humpback 6.95, LIMA
2.86, ...), win rate in percent. It does not say which logarithm; `log_base` defaults to e and is recorded
in every fit, so alphas from different bases are never compared by accident (alpha_2 = alpha_e * ln 2).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

# The paper's 7B scaling runs: data sizes and optimizer steps per size (shared HUMPBACK.md). The steps
# are TrainConfig.steps_for's table too; the sizes are the default experiment.
PAPER_SIZES: tuple[int, ...] = (3200, 6400, 12800, 25600, 51200)
PAPER_STEPS: tuple[int, ...] = (500, 600, 600, 1200, 1600)
LOG_BASES: dict[str, float] = {"e": math.e, "2": 2.0, "10": 10.0}

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ScalingFit:
  """w = alpha * log_base(N) + c, fitted by least squares on `n_points` (N, score) points.

  stderr / stderr_c: the usual OLS standard errors from the residual variance (n_points - 2 degrees of
  freedom); interval / c_interval: the two-sided Student-t intervals at `confidence`. With two distinct
  sizes and two points the line is exact and every uncertainty is NaN (undefined, not zero).
  """
  alpha: float
  c: float
  stderr: float  # of alpha
  stderr_c: float
  interval: tuple[float, float]  # of alpha
  c_interval: tuple[float, float]
  r2: float  # NaN when every score is equal (no variance to explain)
  cov_alpha_c: float  # for the band of the fitted mean, var(a x + c) = x^2 va + 2 x cov + vc
  residual_std: float
  dof: int
  n_points: int
  confidence: float
  log_base: str

  def predict(self, n: float | np.ndarray) -> float | np.ndarray:
    return self.alpha * _log(np.asarray(n, dtype=np.float64), self.log_base) + self.c

  def mean_stderr(self, n: float | np.ndarray) -> np.ndarray:
    """Standard error of the fitted mean at N (the band drawn around the line)."""
    x = _log(np.asarray(n, dtype=np.float64), self.log_base)
    var = x * x * self.stderr ** 2 + 2 * x * self.cov_alpha_c + self.stderr_c ** 2
    return np.sqrt(np.maximum(var, 0.0))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready (NaN -> None, since JSON has no NaN)."""
    def clean(v):
      if isinstance(v, tuple):
        return [clean(x) for x in v]
      if isinstance(v, float) and not math.isfinite(v):
        return None
      return v
    return {f.name: clean(getattr(self, f.name)) for f in dataclasses.fields(self)}

  def describe(self) -> str:
    log = "ln N" if self.log_base == "e" else f"log{self.log_base} N"
    lo, hi = self.interval
    spread = (f"alpha stderr {self.stderr:.3f}, {self.confidence:.0%} interval [{lo:.3f}, {hi:.3f}]"
              if self.dof > 0 else "no uncertainty from 2 points")
    r2 = "undefined (equal scores)" if math.isnan(self.r2) else f"{self.r2:.3f}"
    return f"w = {self.alpha:.3f} * {log} {_signed(self.c, 3)}; {spread}; R^2 {r2}; {self.n_points} points"


def _signed(x: float, digits: int) -> str:
  return f"{'-' if x < 0 else '+'} {abs(x):.{digits}f}"


def _log(n: np.ndarray, base: str) -> np.ndarray:
  if base not in LOG_BASES:
    raise ValueError(f"log_base: expected one of {sorted(LOG_BASES)}, found {base!r}")
  return np.log(n) / math.log(LOG_BASES[base])


def _t_quantile(p: float, dof: int) -> float:
  # scipy is a dependency of jax itself, so always installed; imported here to keep importing this cheap.
  from scipy import stats
  return float(stats.t.ppf(p, dof))


def fit_log_scaling(ns: Sequence[float], scores: Sequence[float], *, confidence: float = 0.95,
                    log_base: str = "e") -> ScalingFit:
  """Least-squares fit of score = alpha * log(N) + c; see ScalingFit. Repeated N (replicate runs) are fine."""
  n_arr = np.asarray(ns, dtype=np.float64)
  y = np.asarray(scores, dtype=np.float64)
  if n_arr.ndim != 1 or y.shape != n_arr.shape:
    raise ValueError(f"fit_log_scaling: ns and scores must be equal-length 1-D sequences, found shapes "
                     f"{n_arr.shape} and {y.shape}")
  if not np.all(np.isfinite(n_arr)) or np.any(n_arr <= 0):
    raise ValueError(f"fit_log_scaling: every N must be a positive finite number, found {n_arr.tolist()}")
  if not np.all(np.isfinite(y)):
    raise ValueError(f"fit_log_scaling: every score must be finite, found {y.tolist()}")
  if len(np.unique(n_arr)) < 2:
    raise ValueError(f"fit_log_scaling: need at least two distinct N to fit a slope, found {np.unique(n_arr).tolist()}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"fit_log_scaling: confidence must be in (0, 1), found {confidence}")
  x = _log(n_arr, log_base)
  k = len(x)
  xm, ym = x.mean(), y.mean()
  sxx = float(np.sum((x - xm) ** 2))
  alpha = float(np.sum((x - xm) * (y - ym)) / sxx)
  c = float(ym - alpha * xm)
  resid = y - (alpha * x + c)
  ssr = float(np.sum(resid ** 2))
  sst = float(np.sum((y - ym) ** 2))
  dof = k - 2
  nan = float("nan")
  if dof > 0:
    s2 = ssr / dof
    se_a = math.sqrt(s2 / sxx)
    se_c = math.sqrt(s2 * (1.0 / k + xm * xm / sxx))
    cov = -xm * s2 / sxx
    t = _t_quantile(0.5 + confidence / 2, dof)
    a_int, c_int = (alpha - t * se_a, alpha + t * se_a), (c - t * se_c, c + t * se_c)
    res_std = math.sqrt(s2)
  else:  # two points: an exact line, nothing left to estimate the noise from
    se_a = se_c = cov = res_std = nan
    a_int = c_int = (nan, nan)
  r2 = 1.0 - ssr / sst if sst > 0 else nan
  return ScalingFit(alpha=alpha, c=c, stderr=se_a, stderr_c=se_c, interval=a_int, c_interval=c_int, r2=r2,
                    cov_alpha_c=cov, residual_std=res_std, dof=dof, n_points=k, confidence=confidence,
                    log_base=log_base)


# ----------------------------------------------------------------------------------------------- subsets
def subset_order(ids: Sequence[str], seed: int) -> list[int]:
  """Indices of `ids` in a seeded pseudo-random order. Each id's rank is a hash of (seed, id), so the order
  does not depend on how the file was written (process merges, reordering) and adding items to the pool
  does not reorder the others; equal ids keep their input order."""
  def rank(i: int) -> tuple[bytes, int]:
    return hashlib.sha256(f"{seed}\x00{ids[i]}".encode("utf-8")).digest(), i
  return sorted(range(len(ids)), key=rank)


def check_sizes(sizes: Sequence[int], pool: int, where: str = "sizes") -> list[int]:
  """Sorted sizes, each in 1..pool; errors name the offending size and the pool."""
  out = sorted(int(n) for n in sizes)
  if not out:
    raise ValueError(f"{where}: expected at least one size, found none")
  if len(set(out)) != len(out):
    raise ValueError(f"{where}: sizes must be distinct, found {list(sizes)}")
  bad = [n for n in out if n < 1 or n > pool]
  if bad:
    raise ValueError(f"{where}: every size must be between 1 and the {pool} examples available, found {bad}")
  return out


def nested_subsets(items: Sequence[T], sizes: Sequence[int], seed: int,
                   key: Callable[[T], str] = lambda r: r["id"]) -> dict[int, list[T]]:
  """{N: the first N items of subset_order(...)} for each size: deterministic, and nested (N1 < N2 ->
  subset(N1) is a prefix of subset(N2)), so a curve's points differ only by the data added."""
  ns = check_sizes(sizes, len(items))
  order = subset_order([key(x) for x in items], seed)
  return {n: [items[i] for i in order[:n]] for n in ns}


# ------------------------------------------------------------------------------------------------- plot
def plot_scaling(ns: Sequence[float], scores: Sequence[float], fit: ScalingFit, *, ylabel: str = "score",
                 title: str = "") -> bytes:
  """PNG of the points on a log-N axis, the fitted line, and the band of the fitted mean at fit.confidence."""
  import matplotlib
  matplotlib.use("Agg")  # no display on servers; must precede pyplot
  import matplotlib.pyplot as plt

  n_arr = np.asarray(ns, dtype=np.float64)
  grid = np.geomspace(n_arr.min() / 1.25, n_arr.max() * 1.25, 100)
  fig, ax = plt.subplots(figsize=(5.2, 3.4))
  ax.scatter(n_arr, scores, color="tab:blue", zorder=3, label="trained models")
  ax.plot(grid, fit.predict(grid), color="tab:orange", label=f"fit: alpha = {fit.alpha:.2f}")
  if fit.dof > 0:
    half = _t_quantile(0.5 + fit.confidence / 2, fit.dof) * fit.mean_stderr(grid)
    ax.fill_between(grid, fit.predict(grid) - half, fit.predict(grid) + half, color="tab:orange", alpha=0.2,
                    label=f"{fit.confidence:.0%} band of the mean")
  ax.set_xscale("log")
  ax.set_xlabel("training examples N")
  ax.set_ylabel(ylabel)
  lo, hi = fit.interval
  interval = "" if math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"
  log = "ln N" if fit.log_base == "e" else f"log{fit.log_base} N"
  ax.set_title(title or f"w = {fit.alpha:.2f} {log} {_signed(fit.c, 2)}; alpha {fit.confidence:.0%} interval{interval}",
               fontsize=9)
  ax.legend(fontsize=7)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
  plt.close(fig)
  return buf.getvalue()


def fit_summary(ns: Sequence[int], scores: Sequence[float], fit: ScalingFit,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The JSON written beside the plot: the points, the fit, and whatever the caller adds (settings)."""
  return {"points": [{"n": int(n), "score": float(s)} for n, s in zip(ns, scores)], "fit": fit.to_dict(),
          "formula": f"score = alpha * log_{fit.log_base}(N) + c", **dict(extra or {})}
