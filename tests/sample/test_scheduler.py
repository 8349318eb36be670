"""The host scheduler alone (numpy, no model): row packing, batches, continuous batching decisions, stop rules."""
from __future__ import annotations

import numpy as np

from hb_jax.sample.programs import FINISH_EOS, FINISH_LENGTH, FINISH_RELEASED, FINISH_STOP, RUNNING
import pytest

from hb_jax.sample.scheduler import PageTable, RowScheduler, StopRules, batches, pack_rows


def test_pack_rows_left_and_right():
  seqs = [np.array([7, 8, 9]), np.array([5])]
  tokens, positions, segments = pack_rows(seqs, 4, 5, 10, left_pad=True)
  np.testing.assert_array_equal(tokens[:2], [[0, 0, 7, 8, 9], [0, 0, 0, 0, 5]])
  np.testing.assert_array_equal(positions[:2], [[0, 0, 10, 11, 12], [0, 0, 0, 0, 10]])
  np.testing.assert_array_equal(segments, [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0] * 5, [0] * 5])
  tokens, positions, segments = pack_rows(seqs, 3, 4, 2, left_pad=False)
  np.testing.assert_array_equal(tokens, [[7, 8, 9, 0], [5, 0, 0, 0], [0] * 4])
  np.testing.assert_array_equal(positions, [[2, 3, 4, 5]] * 3)  # padding after a sequence continues it
  np.testing.assert_array_equal(segments, [[1, 1, 1, 0], [1, 0, 0, 0], [0] * 4])
  assert tokens.dtype == positions.dtype == segments.dtype == np.int32


def test_batches_group_by_bucket_in_input_order():
  got = list(batches([3, 20, 5, 17, 2, 4, 30], (8, 32), 4))
  assert got == [(8, 4, [0, 2, 4, 5]), (32, 4, [1, 3, 6])]
  assert list(batches([1] * 5, (8,), 4)) == [(8, 4, [0, 1, 2, 3]), (8, 1, [4])]


def test_row_scheduler_refills_freed_rows_then_shrinks_the_tail():
  rows = RowScheduler(list(range(10, 20)), max_batch=4, refill_min=2)
  assert rows.batch == 4 and rows.refill_floor == 2
  first = rows.next_refill()
  assert first.requests == [10, 11, 12, 13] and first.rows.tolist() == [0, 1, 2, 3]
  assert rows.next_refill() is None  # no free row
  done = np.zeros(4, bool)
  assert rows.decode_target(done) == 2  # with a queue: stop once enough rows free up to refill
  done[[1, 3]] = True
  assert rows.decode_target(done) is None  # finished rows wait to be read
  assert rows.rows_to_read(done, stop_strings=False).tolist() == [1, 3]
  assert rows.rows_to_read(done, stop_strings=True).tolist() == [0, 1, 2, 3]
  assert [rows.hand_out(1, still_running=False), rows.hand_out(3, still_running=False)] == [11, 13]
  # A stop string ended live row 0 on the host: freed here, released on the device at the next decode ...
  assert rows.hand_out(0, still_running=True) == 10
  refill = rows.next_refill()
  assert refill.requests == [14, 15, 16] and refill.rows.tolist() == [0, 1, 3, 4]  # padded to 4 with row 4
  assert not rows.take_release().any()  # ... unless the row was refilled first
  assert rows.hand_out(2, still_running=False) == 12
  rows.next_refill()  # 17 into row 2; 18 and 19 wait
  assert rows.hand_out(2, still_running=True) == 17
  assert rows.take_release().tolist() == [False, False, True, False] and not rows.release.any()
  assert rows.compaction() is None  # the queue is not dry
  assert rows.next_refill().rows.tolist() == [2, 4]  # 18 into row 2: one row, padded to refill_min
  assert list(rows.queue) == [19] and rows.row_req.tolist() == [14, 15, 18, 16]
  assert [rows.hand_out(b, still_running=False) for b in (0, 1, 2)] == [14, 15, 18]
  rows.next_refill()  # 19 into row 0
  assert rows.decode_target(np.zeros(4, bool)) == 1  # queue dry, 2 live rows: one more frees half
  sel, keep = rows.compaction()  # 2 live rows of 4: they move to a batch of 2
  assert sel.tolist() == [0, 3] and keep.tolist() == [True, True]
  assert rows.batch == 2 and rows.row_req.tolist() == [19, 16]
  rows.hand_out(0, still_running=False)
  sel, keep = rows.compaction()
  assert sel.tolist() == [1] and keep.tolist() == [True] and rows.batch == 1 and rows.busy
  assert rows.compaction() is None
  rows.hand_out(0, still_running=False)
  assert not rows.busy


def test_stop_rules_make_completions():
  toks, lps = np.array([4, 5, 6, 2]), -np.arange(1, 5, dtype=np.float32)
  c = StopRules().completion(toks, lps, FINISH_EOS)
  assert (c.tokens.tolist(), c.finish_reason, c.num_decoded) == ([4, 5, 6], "eos", 4)
  assert StopRules().completion(toks, lps, FINISH_LENGTH).tokens.tolist() == [4, 5, 6, 2]
  # The longest stop sequence that ends the output is removed, whatever the listed order.
  c = StopRules(sequences=((2,), (6, 2))).completion(toks, lps, FINISH_STOP)
  assert (c.tokens.tolist(), c.logprobs.tolist(), c.finish_reason) == ([4, 5], [-1.0, -2.0], "stop")
  assert StopRules().completion(toks, lps, FINISH_RELEASED).finish_reason == "stop"
  # Stop strings: the shortest prefix whose text contains one; a running row without one goes on.
  words = StopRules(strings=("b c",), detokenize=lambda ids: " ".join("abcdefg"[i] for i in ids))
  c = words.completion([1, 2, 3, 4], [0.0] * 4, RUNNING)
  assert (c.tokens.tolist(), c.finish_reason, c.num_decoded) == ([1, 2], "stop", 2)
  assert words.completion([1, 3, 2], [0.0] * 3, RUNNING) is None
  assert words.completion([1, 3, 2], [0.0] * 3, FINISH_LENGTH).finish_reason == "length"


def test_page_table_hands_out_and_takes_back_pages():
  t = PageTable(batch=4, slots=10, page_size=4)  # 3 pages a row, 12 in the pool
  assert (t.per_row, t.num_pages) == (3, 12) and (t.table == 12).all()
  t.grow(0, 5)
  t.grow(1, 1)
  t.grow(0, 6)  # still within its 2 pages
  assert t.table[0].tolist() == [0, 1, 12] and t.table[1].tolist() == [2, 12, 12]
  t.grow(0, 99)  # never more than a row's worth
  assert t.table[0].tolist() == [0, 1, 3]
  t.release(0)
  assert (t.table[0] == 12).all()
  t.grow(2, 8)  # freed pages go back to the end of the queue: the fresh ones first
  assert t.table[2].tolist() == [4, 5, 12]
  assert t.rows(np.array([1, 4])).tolist() == [[2, 12, 12], [12, 12, 12]]  # row 4: a refill's padding
  t.compacted(np.array([2, 1]), np.array([True, False]))
  assert t.table.tolist() == [[4, 5, 12], [12, 12, 12]]


def test_page_table_keeps_each_shards_rows_on_its_pages():
  t = PageTable(batch=4, slots=8, page_size=4, shards=2)  # rows 0-1 on pages 0-3, rows 2-3 on pages 4-7
  for row in range(4):
    t.grow(row, 8)
  assert t.table.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
  with pytest.raises(ValueError, match="not compacted"):
    t.compacted(np.array([0, 2]), np.array([True, True]))
  with pytest.raises(ValueError, match="do not split"):
    PageTable(batch=3, slots=8, page_size=4, shards=2)
