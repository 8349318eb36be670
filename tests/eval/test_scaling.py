"""Data scaling: the log-N fit against planted slopes (noiseless: exact; noisy: within its standard error,
and the standard error and intervals calibrated by Monte Carlo), nested deterministic subsets, and the
`scaling` stage's config and plan (the stage itself runs on the shared tiny run: tests/pipeline/test_e2e.py)."""
import json
import math

import numpy as np
import pytest

from hb_jax.config import ConfigError
from hb_jax.eval import scaling
from hb_jax.pipeline import runner
from hb_jax.pipeline import scaling as pipeline_scaling
from hb_jax.pipeline.config import ScalingConfig

from tests.pipeline.common import tiny_config

ALPHA, C = 6.95, -20.0  # the paper's Humpback alpha, an arbitrary intercept


def _analytic_stderr(ns, sigma):
  x = np.log(np.asarray(ns, dtype=np.float64))
  return sigma / math.sqrt(np.sum((x - x.mean()) ** 2))


# ------------------------------------------------------------------------------------------------------ fit
def test_noiseless_fit_is_exact():
  ns = scaling.PAPER_SIZES
  fit = scaling.fit_log_scaling(ns, [ALPHA * math.log(n) + C for n in ns])
  assert fit.alpha == pytest.approx(ALPHA, abs=1e-9) and fit.c == pytest.approx(C, abs=1e-8)
  assert fit.stderr < 1e-9 and fit.r2 == pytest.approx(1.0) and fit.dof == 3 and fit.n_points == 5
  # Another base rescales alpha by ln(base) and leaves the line unchanged.
  fit2 = scaling.fit_log_scaling(ns, [ALPHA * math.log(n) + C for n in ns], log_base="2")
  assert fit2.alpha == pytest.approx(ALPHA * math.log(2)) and fit2.predict(5000) == pytest.approx(fit.predict(5000))


def test_noisy_fit_recovers_planted_slope_within_its_stderr():
  rng = np.random.default_rng(0)
  ns, sigma = np.round(np.geomspace(100, 100_000, 40)), 3.0
  y = ALPHA * np.log(ns) + C + rng.normal(0, sigma, ns.shape)
  fit = scaling.fit_log_scaling(ns, y)
  assert abs(fit.alpha - ALPHA) < 3 * fit.stderr
  assert abs(fit.c - C) < 3 * fit.stderr_c
  assert fit.stderr == pytest.approx(_analytic_stderr(ns, sigma), rel=0.25)  # s has ~11% sd at 38 dof
  lo, hi = fit.interval
  assert lo < ALPHA < hi and hi - lo == pytest.approx(2 * 2.0244 * fit.stderr, rel=1e-3)  # t(0.975, 38)


def test_stderr_and_interval_are_calibrated():
  # 2,000 noisy replicates of the paper's five sizes: the spread of alpha-hat is the analytic standard
  # error and the 95% t-interval (3 dof) covers the planted alpha 95% of the time.
  rng = np.random.default_rng(1)
  ns, sigma, reps = np.array(scaling.PAPER_SIZES, dtype=float), 2.0, 2000
  fits = [scaling.fit_log_scaling(ns, ALPHA * np.log(ns) + C + rng.normal(0, sigma, ns.shape)) for _ in range(reps)]
  alphas = np.array([f.alpha for f in fits])
  assert np.std(alphas) == pytest.approx(_analytic_stderr(ns, sigma), rel=0.05)
  assert np.mean(alphas) == pytest.approx(ALPHA, abs=3 * _analytic_stderr(ns, sigma) / math.sqrt(reps))
  coverage = np.mean([f.interval[0] <= ALPHA <= f.interval[1] for f in fits])
  coverage_c = np.mean([f.c_interval[0] <= C <= f.c_interval[1] for f in fits])
  assert 0.93 <= coverage <= 0.97 and 0.93 <= coverage_c <= 0.97


def test_two_points_give_an_exact_line_with_undefined_uncertainty():
  fit = scaling.fit_log_scaling([10, 100], [1.0, 3.0])
  assert fit.alpha == pytest.approx(2 / math.log(10)) and fit.dof == 0
  assert math.isnan(fit.stderr) and math.isnan(fit.interval[0])
  d = fit.to_dict()
  assert d["stderr"] is None and d["interval"] == [None, None]
  json.dumps(d, allow_nan=False)  # valid JSON


def test_fit_errors_name_the_problem():
  with pytest.raises(ValueError, match="two distinct N"):
    scaling.fit_log_scaling([100, 100], [1.0, 2.0])
  with pytest.raises(ValueError, match="equal-length"):
    scaling.fit_log_scaling([100, 200], [1.0])
  with pytest.raises(ValueError, match="positive finite"):
    scaling.fit_log_scaling([0, 200], [1.0, 2.0])
  with pytest.raises(ValueError, match="log_base"):
    scaling.fit_log_scaling([100, 200], [1.0, 2.0], log_base="3")


# -------------------------------------------------------------------------------------------------- subsets
def test_subsets_are_nested_deterministic_and_independent_of_file_order():
  pool = [{"id": f"r{i:03d}"} for i in range(50)]
  subs = scaling.nested_subsets(pool, [40, 10, 20], seed=0)
  assert list(subs) == [10, 20, 40]
  assert subs[20][:10] == subs[10] and subs[40][:20] == subs[20]
  assert len({r["id"] for r in subs[40]}) == 40
  assert scaling.nested_subsets(pool, [10, 20, 40], seed=0) == subs
  assert scaling.nested_subsets(pool[::-1], [10, 20, 40], seed=0) == subs  # order of the file is irrelevant
  assert scaling.nested_subsets(pool, [10], seed=1)[10] != subs[10]
  assert [r["id"] for r in subs[40]] != [r["id"] for r in pool[:40]]  # shuffled, not the file's head
  # Growing the pool keeps the old items' relative order.
  grown = pool + [{"id": f"new{i}"} for i in range(20)]
  old_ids = {r["id"] for r in pool}
  assert [r for r in scaling.nested_subsets(grown, [70], seed=0)[70] if r["id"] in old_ids] == \
    scaling.nested_subsets(pool, [50], seed=0)[50]
  with pytest.raises(ValueError, match=r"between 1 and the 50 examples available, found \[60\]"):
    scaling.nested_subsets(pool, [10, 60], seed=0)


def test_scaling_config_is_checked_and_not_in_the_default_plan():
  with pytest.raises(ConfigError, match="one step count per size"):
    ScalingConfig(sizes=(10, 20), steps=(5,))
  with pytest.raises(ConfigError, match="at least two sizes"):
    ScalingConfig(sizes=(10,))
  with pytest.raises(ConfigError, match="log_base"):
    ScalingConfig(log_base="3")
  cfg = tiny_config()
  assert "scaling" not in [s.name for s in runner.plan(cfg)]  # `make demo` never runs it
  assert "scaling" in runner.stage_names(cfg)
  # Without steps, each size gets the paper's steps (TrainConfig.steps_for holds the same table).
  paper = tiny_config(**{"scaling.sizes": scaling.PAPER_SIZES, "scaling.steps": ()})
  assert pipeline_scaling.size_steps(paper) == dict(zip(scaling.PAPER_SIZES, scaling.PAPER_STEPS))
