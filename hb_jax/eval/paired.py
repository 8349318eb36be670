"""Paired comparison of two models on the same held-out items: wins, losses and McNemar's exact test.

Two accuracies measured on the same items are not independent samples, so comparing them with two
binomial intervals overstates the noise. McNemar's test looks only at the items where the models
disagree: under "neither model is better", each disagreement is a fair coin, and the two-sided p-value
is the chance of a split at least as lopsided as the one observed.

  mcnemar_exact(wins, losses)   two-sided exact p-value (binomial, p = 1/2, on wins + losses trials)
  compare(a, b)                 {"items", "wins", "losses", "ties", "p_value"} for per-item results a, b
"""
from __future__ import annotations

import math
from typing import Mapping


def mcnemar_exact(wins: int, losses: int) -> float:
  """P(a split at least this lopsided | disagreements are fair coins), two-sided; 1.0 with no disagreement."""
  if wins < 0 or losses < 0:
    raise ValueError(f"mcnemar_exact: counts must be >= 0, found wins={wins} losses={losses}")
  n = wins + losses
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
  return min(1.0, 2.0 * tail / 2.0 ** n)


def compare(a: Mapping[str, bool], b: Mapping[str, bool]) -> dict[str, float | int]:
  """Model a against model b on the items both were scored on (item id -> correct)."""
  if set(a) != set(b):
    only = sorted(set(a) ^ set(b))[:3]
    raise ValueError(f"paired.compare: the models were scored on different items (e.g. {only})")
  wins = sum(bool(a[k]) and not b[k] for k in a)
  losses = sum(bool(b[k]) and not a[k] for k in a)
  return {"items": len(a), "wins": wins, "losses": losses, "ties": len(a) - wins - losses,
          "p_value": mcnemar_exact(wins, losses)}
