"""The curation benchmark's labelled candidates are frozen (bench/data/curation_dev.md records how they were made
and their hash), and its measures are the textbook ones."""
import collections
import hashlib
import itertools
import json
import pathlib

import numpy as np
import pytest

from bench import curate

SHA256 = "d2d356f6bb25f3e5fdb104cb0c9e3d66aec6f1114fbdce8dba2cec08e4c329a2"
CATEGORIES = {"assistant_complete", "partial_or_high_level", "blog_forum_first_person", "promotional_navigation",
              "off_topic", "truncated", "mismatched_backtranslation"}


def test_the_labelled_set_is_the_frozen_one():
  data = curate.DATA.read_bytes()
  assert hashlib.sha256(data).hexdigest() == SHA256, "curation_dev.jsonl changed: update its card and this hash"
  assert f"sha256: {SHA256}" in pathlib.Path(curate.DATA).with_suffix(".md").read_text()
  rows = [json.loads(l) for l in data.decode().splitlines()]
  assert [r["id"] for r in rows] == [f"cd-{i:03d}" for i in range(1, len(rows) + 1)] and len(rows) == 250
  assert all(list(r) == ["id", "category", "instruction", "output", "label"] for r in rows)
  labels = collections.Counter(r["label"] for r in rows)
  assert set(labels) == {1, 2, 3, 4, 5} and 0.15 <= (labels[4] + labels[5]) / len(rows) <= 0.25  # ~20% good
  assert {r["category"] for r in rows} == CATEGORIES


def _pairwise_auc(scores, positive):
  pos = [s for s, p in zip(scores, positive) if p]
  neg = [s for s, p in zip(scores, positive) if not p]
  return sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)) / (len(pos) * len(neg))


def test_auc_spearman_and_selection_measures():
  rng = np.random.default_rng(0)
  scores = rng.integers(1, 6, 40).astype(float)  # many ties, as ratings have
  positive = rng.random(40) < 0.3
  assert curate.auc(scores, positive) == pytest.approx(_pairwise_auc(scores, positive))
  assert curate.auc([1, 2, 3], [False, False, True]) == 1.0 and curate.auc([3, 2, 1], [False, False, True]) == 0.0
  assert curate.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert curate.spearman([0, 0, 0], [1, 2, 3]) is None and curate.auc([1, 2], [True, True]) is None
  cands = [{"id": f"c{i}", "label": l} for i, l in enumerate([5, 5, 4, 1, 2, 1])]
  rows = [{"score": 5, "route": "parsed"}, {"score": None, "route": "none"}, {"score": 4.2, "route": "fallback"},
          {"score": 5, "route": "parsed"}, {"score": 1, "route": "parsed"}, {"score": 4.6, "route": "fallback"}]
  m = curate.measure("generate", rows, cands, "generate", 2.0)
  assert m["routes"] == {"parsed": 3, "fallback": 2, "none": 1} and m["parse_rate"] == 0.5
  # A5 (k=5): c0, c3 parsed 5 and c5 fallback 4.6 >= 4.5; label 5: c0, c1.
  assert (m["A5_selected"], m["A5_precision"], m["A5_recall"]) == (3, pytest.approx(1 / 3), 0.5)
  # A4 (k=4): c0, c2, c3, c5; label >= 4: c0, c1, c2.
  assert (m["A4_selected"], m["A4_precision"], m["A4_recall"]) == (4, 0.5, pytest.approx(2 / 3))
  assert m["candidates_per_s"] == 3.0
