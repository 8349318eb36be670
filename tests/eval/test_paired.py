"""Paired comparison: McNemar's exact p-values against the binomial they are defined by."""
import math

import pytest

from hb_jax.eval import paired


def _binomial_two_sided(k: int, n: int) -> float:
  # Direct definition: total probability of splits no more likely than the observed one (p = 1/2 is
  # symmetric, so this equals twice the smaller tail).
  probs = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
  return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-12)))


@pytest.mark.parametrize("wins,losses", [(22, 7), (16, 2), (11, 10), (0, 6), (5, 5), (30, 0)])
def test_mcnemar_matches_the_binomial_definition(wins, losses):
  assert paired.mcnemar_exact(wins, losses) == pytest.approx(_binomial_two_sided(wins, wins + losses), rel=1e-9)


def test_mcnemar_known_values_and_edges():
  assert paired.mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # all six disagreements one way
  assert paired.mcnemar_exact(0, 0) == 1.0
  assert paired.mcnemar_exact(3, 3) == 1.0
  assert paired.mcnemar_exact(7, 22) == paired.mcnemar_exact(22, 7)
  with pytest.raises(ValueError, match="counts must be >= 0"):
    paired.mcnemar_exact(-1, 2)


def test_compare_counts_only_disagreements_and_refuses_other_items():
  a = {"x": True, "y": True, "z": False, "w": True}
  b = {"x": True, "y": False, "z": False, "w": False}
  r = paired.compare(a, b)
  assert (r["items"], r["wins"], r["losses"], r["ties"]) == (4, 2, 0, 2)
  assert r["p_value"] == pytest.approx(0.5)
  with pytest.raises(ValueError, match="different items"):
    paired.compare(a, {"x": True})
