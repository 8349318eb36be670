"""Examples -> batches: truncation rules, packing layout, exact examples per step, sharding, iterator state."""
import numpy as np
import pytest

from hb_jax.config import MeshConfig
from hb_jax.data import loader
from hb_jax.parallel import make_mesh

from .common import random_examples


def test_prepare_truncates_or_drops_and_counts():
  exs = [([1, 5, 6], [7, 8, 2]),            # 6 tokens: fits seq_len 5 (5 slots)
         ([1, 5, 6], [7, 8, 9, 10, 2]),     # too long: response cut to 3 tokens
         ([1] * 6, [7]),                    # prompt leaves no room for a response token
         ([1, 5], [])]                      # empty response
  kept, stats = loader.prepare_examples(exs, seq_len=5, overlong="truncate")
  assert stats.as_dict() == dict(total=4, kept=2, truncated=1, dropped_too_long=1, dropped_empty=1)
  assert kept[1]["response"].tolist() == [7, 8, 9]
  assert all(loader.num_slots(e) <= 5 for e in kept)
  kept, stats = loader.prepare_examples(exs, seq_len=5, overlong="drop")
  assert (stats.kept, stats.truncated, stats.dropped_too_long) == (1, 0, 2)


def test_pack_layout_masks_only_response_targets():
  a, b = loader.example([1, 10, 11], [20, 21, 2]), loader.example([1, 12], [22, 2])
  out = loader.pack([a, b], num_rows=1, seq_len=10)
  n_a, n_b = loader.num_slots(a), loader.num_slots(b)
  assert out["segment_ids"][0].tolist() == [1] * n_a + [2] * n_b + [0] * (10 - n_a - n_b)
  assert out["positions"][0, :n_a + n_b].tolist() == list(range(n_a)) + list(range(n_b))
  assert out["inputs"][0, :n_a].tolist() == [1, 10, 11, 20, 21]
  assert out["targets"][0, :n_a].tolist() == [10, 11, 20, 21, 2]
  # The loss falls exactly on the response tokens: targets 20, 21, 2 and 22, 2.
  masked = out["targets"][0][out["loss_mask"][0] > 0].tolist()
  assert masked == [20, 21, 2, 22, 2]
  padded = loader.pack([a, b], num_rows=3, seq_len=10, packed=False)
  assert padded["segment_ids"][:, 0].tolist() == [1, 1, 0]
  with pytest.raises(loader.PackingError, match="need 2 rows"):
    loader.pack([a, b], num_rows=1, seq_len=6)


def _mesh():
  return make_mesh(MeshConfig(2, 2, 2))


def test_each_step_takes_exactly_batch_size_examples_and_epochs_cover_all():
  exs = random_examples(24, seed=1)
  for i, e in enumerate(exs):  # tag each example by its first prompt token so we can count them
    e["prompt"][0] = 3 + i
  lengths = [loader.num_slots(e) for e in exs]
  plan = loader.plan_batches(lengths, batch_size=8, micro_batches=2, seq_len=32, packed=True, num_steps=6,
                             seed=0, mesh=_mesh())
  assert plan.rows % 4 == 0  # the batch axis splits over data x fsdp = 4
  data = loader.TrainData(exs, plan, seed=0, mesh=_mesh())
  seen = []
  for _ in range(6):
    b = data.next_local()
    assert b["inputs"].shape == (2, plan.rows, 32)
    starts = (b["positions"] == 0) & (b["segment_ids"] > 0)
    ids = b["inputs"][starts].tolist()
    assert len(ids) == 8
    seen.append(sorted(ids))
  epoch1, epoch2 = sum(seen[:3], []), sum(seen[3:], [])
  assert sorted(epoch1) == sorted(epoch2) == list(range(3, 27))
  assert seen[:3] != seen[3:]  # a fresh shuffle each epoch


def test_process_shards_are_disjoint_and_plan_is_shared():
  exs = random_examples(32, seed=2)
  for i, e in enumerate(exs):
    e["prompt"][0] = 3 + i
  lengths = [loader.num_slots(e) for e in exs]
  plans = [loader.plan_batches(lengths, batch_size=8, micro_batches=1, seq_len=32, packed=True, num_steps=4,
                               seed=5, mesh=_mesh(), process_count=2) for _ in range(2)]
  assert plans[0] == plans[1] and plans[0].local_examples == 4
  firsts = []
  for p in range(2):
    ds = loader._index_dataset(len(exs), 5, p, 2, 4)
    firsts.append(set(np.concatenate([ds[s] for s in range(4)]).tolist()))
  assert not firsts[0] & firsts[1] and len(firsts[0] | firsts[1]) == 32


def test_given_rows_too_few_for_a_step_are_refused_up_front():
  """rows_per_micro_batch fixed by the user (global rows, split over the processes) must hold every step's
  examples; too few is refused at planning, naming the step, not when training reaches it."""
  lengths = [20] * 16  # 20 of 32 slots: one example a row
  kw = dict(batch_size=8, micro_batches=1, seq_len=32, packed=True, num_steps=4, seed=5, mesh=_mesh())
  for pc in (1, 2):
    assert loader.plan_batches(lengths, process_count=pc, **kw).rows == 8
    assert loader.plan_batches(lengths, process_count=pc, rows=8, **kw).rows == 8
    with pytest.raises(loader.PackingError, match=rf"rows_per_micro_batch 4 \({4 // pc} per process on {pc}\) is "
                                                  rf"too few: step 1 packs its examples into {8 // pc} rows"):
      loader.plan_batches(lengths, process_count=pc, rows=4, **kw)


def test_iterator_state_restores_the_stream():
  exs = random_examples(20, seed=3)
  lengths = [loader.num_slots(e) for e in exs]
  plan = loader.plan_batches(lengths, batch_size=4, micro_batches=1, seq_len=32, packed=True, num_steps=10,
                             seed=1, mesh=_mesh())
  a = loader.TrainData(exs, plan, seed=1, mesh=_mesh())
  for _ in range(3):
    a.next_local()
  state = a.iterator.get_state()
  expected = [a.next_local() for _ in range(3)]
  b = loader.TrainData(exs, plan, seed=1, mesh=_mesh())
  b.iterator.set_state(state)
  for want in expected:
    got = b.next_local()
    for k in loader.FIELDS:
      np.testing.assert_array_equal(got[k], want[k])


def test_split_validation_is_seeded_and_disjoint():
  exs = random_examples(10)
  tr, va = loader.split_validation(exs, 3, seed=4)
  tr2, va2 = loader.split_validation(exs, 3, seed=4)
  assert len(tr) == 7 and len(va) == 3
  assert all(x is y for x, y in zip(va, va2))
  assert not {id(x) for x in tr} & {id(x) for x in va}


def test_training_records_are_checked_line_by_line_before_training(tmp_path):
  from hb_jax.data import records

  path = tmp_path / "train.jsonl"
  good = '{"instruction": "Q", "output": "A"}\n'
  # U+2028 inside a string is JSON, not a line break (str.splitlines would split there).
  path.write_text(good + '{"instruction": "Q\u2028two", "output": "A"}\n'
                  + '{"prompt_tokens": [1, 2], "response_tokens": [3]}\n', encoding="utf-8")
  got = loader.read_training_records(path)
  assert [r.get("instruction") for r in got] == ["Q", "Q\u2028two", None]
  for bad, message in [('{"instruction": "Q"}', "'output'"), ("[1, 2]", "JSON object"),
                       ('{"prompt_tokens": [1], "response_tokens": ["a"]}', "'response_tokens' to be a list"),
                       ('{"prompt_tokens": [1]}', "'response_tokens' to be a list")]:
    path.write_text(good + bad + "\n")
    with pytest.raises(records.RecordError, match=rf"{path}:2: .*{message}"):
      loader.read_training_records(path)
  path.write_bytes(good.encode() + b'{"instruction": "\xff", "output": "A"}\n')
  with pytest.raises(records.RecordError, match=rf"{path}:2: expected UTF-8"):
    loader.read_training_records(path)
