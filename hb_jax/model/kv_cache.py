"""The KV cache: per-layer keys/values plus per-slot positions and segment ids, with a write index per row.

Rows advance independently (`index[b]` is row b's next free slot), so a left-padded batch, rows refilled
with new prompts mid-decode, and a shared prefix all use the same masking rule as training: a query sees a
slot iff the slot holds its segment and a position not after its own (see hb_jax.model.attention). Empty
slots carry segment id 0, which no real token has, so they are never attended to.

Two layouts of the keys and values, one bookkeeping (positions, segment ids, index per logical slot):
  KVCache       each row owns `slots` contiguous slots per layer ([B, kv_heads, slots, head_dim]).
  PagedKVCache  one pool of fixed-size pages per layer ([pages, page_size, 2 x kv_heads, head_dim], K of
                head h at 2h and its V at 2h + 1: ragged_paged_attention's layout, read by it in place),
                and a page table: row b's slot i is slot i % page_size of page page_table[b, i // page_size].
                Only real tokens are stored, packed: a left-padded prompt's padding takes no slot and no
                page, so a row's live length is its prompt plus what it generated.
                The host hands pages out as rows grow and takes them back when a row finishes
                (hb_jax.sample.scheduler.PageTable), so a refill writes straight into its pages and moving a
                row to another batch position moves one row of the table, not its keys and values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

# Logical axes of one layer's K or V [batch, kv_heads, slots, head_dim] and of the per-slot bookkeeping
# (hb_jax.parallel maps them to mesh axes: heads split like the k/v projections, rows like the batch).
LAYER_KV_AXES = ("batch", "kv_heads", None, "head_dim")
SLOT_AXES = ("batch", None)
# A page pool's pages are split over the batch axes like the rows (each batch shard's rows get pages from
# its own share, PageTable), heads over 'tensor' like the k/v projections.
POOL_AXES = ("batch", None, "kv_heads", "head_dim")


@struct.dataclass
class KVCache:
  # Heads before slots: a layer's [batch, kv_heads, slots, head_dim] slice is exactly the operand layout
  # of both attention contractions (batch dims b, k leading), so XLA reads it without a transpose copy.
  # Stacked ([layers, ...], for the scanned layer loop) or one array per layer (a tuple, for the unrolled
  # loop of the decode path, where each layer reads and updates its own buffer in place: slicing a stacked
  # cache per layer copies it on every step).
  k: Array | tuple[Array, ...]  # [layers, batch, kv_heads, slots, head_dim] or layers x [batch, kv_heads, ...]
  v: Array | tuple[Array, ...]
  positions: Array  # int32 [batch, slots]: the RoPE position of the token in each slot
  segment_ids: Array  # int32 [batch, slots]: 0 for empty slots
  index: Array  # int32 [batch]: next slot each row writes to

  @classmethod
  def zeros(cls, num_layers: int, batch: int, slots: int, num_kv_heads: int, head_dim: int,
            dtype=jnp.float32, per_layer: bool = False) -> "KVCache":
    if per_layer:
      shape = (batch, num_kv_heads, slots, head_dim)
      k = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
      v = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
    else:
      shape = (num_layers, batch, num_kv_heads, slots, head_dim)
      k, v = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
    return cls(k=k, v=v,
               positions=jnp.zeros((batch, slots), jnp.int32),
               segment_ids=jnp.zeros((batch, slots), jnp.int32),
               index=jnp.zeros((batch,), jnp.int32))

  @property
  def slots(self) -> int:
    return self.positions.shape[1]

  @property
  def per_layer(self) -> bool:
    return isinstance(self.k, tuple)

  def logical_axes(self) -> "KVCache":
    """A KVCache of the logical axis names of each of this cache's arrays (for parallel.cache_shardings)."""
    kv = tuple(LAYER_KV_AXES for _ in self.k) if self.per_layer else ("layers",) + LAYER_KV_AXES
    return KVCache(k=kv, v=kv, positions=SLOT_AXES, segment_ids=SLOT_AXES, index=("batch",))

  def unstacked(self) -> "KVCache":
    """The same cache with one K and one V array per layer."""
    if self.per_layer:
      return self
    return self.replace(k=tuple(self.k), v=tuple(self.v))

  def map_kv(self, fn) -> "KVCache":
    """fn applied to every K/V array (each layer's, or the stacked ones), e.g. to gather rows."""
    if self.per_layer:
      return self.replace(k=tuple(map(fn, self.k)), v=tuple(map(fn, self.v)))
    return self.replace(k=fn(self.k), v=fn(self.v))

  def advance(self, positions: Array, segment_ids: Array) -> "KVCache":
    """Records the positions/segments of T new tokens at each row's index (K/V are written per layer).

    The returned cache still carries the old `index` (the layers write K/V there); the caller moves it on
    with `moved(T)` afterwards. Callers must keep index + T <= slots: dynamic_update_slice would clamp.
    """
    return self.replace(positions=write_rows(self.positions, positions, self.index),
                        segment_ids=write_rows(self.segment_ids, segment_ids, self.index))

  def moved(self, steps: int | Array) -> "KVCache":
    return self.replace(index=self.index + steps)


@struct.dataclass
class PagedKVCache:
  pages: tuple[Array, ...]  # per layer [num_pages, page_size, 2 * kv_heads, head_dim]: K, V of head h at 2h, 2h+1
  page_table: Array  # int32 [batch, pages_per_row]; num_pages (out of range) where no page is assigned
  positions: Array  # int32 [batch, slots], slots = pages_per_row * page_size, as KVCache's
  segment_ids: Array  # int32 [batch, slots]
  index: Array  # int32 [batch]

  @classmethod
  def zeros(cls, num_layers: int, batch: int, slots: int, num_kv_heads: int, head_dim: int, page_size: int,
            num_pages: int, dtype=jnp.float32) -> "PagedKVCache":
    per_row = -(-slots // page_size)
    shape = (num_pages, page_size, 2 * num_kv_heads, head_dim)
    return cls(pages=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
               page_table=jnp.full((batch, per_row), num_pages, jnp.int32),
               positions=jnp.zeros((batch, per_row * page_size), jnp.int32),
               segment_ids=jnp.zeros((batch, per_row * page_size), jnp.int32),
               index=jnp.zeros((batch,), jnp.int32))

  slots = KVCache.slots
  moved = KVCache.moved
  per_layer = True

  def advance(self, positions: Array, segment_ids: Array) -> "PagedKVCache":
    """Records the positions/segments of the new tokens that are real (segment id > 0), packed from each
    row's index on: padding (a left-padded prompt's head, a finished row's step) takes no slot and no page.
    The caller moves the index on by `stored(segment_ids)` afterwards; the layers write K/V to the same
    slots (write_pages)."""
    dst_bt = stored_slots(segment_ids, self.index, self.slots)
    rows_bt = jnp.broadcast_to(jnp.arange(dst_bt.shape[0], dtype=jnp.int32)[:, None], dst_bt.shape)
    return self.replace(positions=self.positions.at[rows_bt, dst_bt].set(positions, mode="drop"),
                        segment_ids=self.segment_ids.at[rows_bt, dst_bt].set(segment_ids, mode="drop"))

  @property
  def page_size(self) -> int:
    return self.pages[0].shape[1]

  def logical_axes(self) -> "PagedKVCache":
    return PagedKVCache(pages=tuple(POOL_AXES for _ in self.pages), page_table=SLOT_AXES, positions=SLOT_AXES,
                        segment_ids=SLOT_AXES, index=("batch",))

  def map_kv(self, fn) -> "PagedKVCache":
    """Row gathers (compaction) move the page table's rows; the pages stay where they are."""
    return self.replace(page_table=fn(self.page_table))


def stored_slots(segment_ids: Array, index: Array, slots: int) -> Array:
  """int32 [B, T]: the slot each new token of a paged cache goes to, its real tokens (segment id > 0) packed
  from the row's index on; `slots` (out of range: dropped) for padding."""
  real = segment_ids > 0
  return jnp.where(real, index[:, None] + jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1, slots)


def stored(segment_ids: Array) -> Array:
  """int32 [B]: how many of a call's tokens a paged cache stores per row (its real ones)."""
  return jnp.sum(segment_ids > 0, axis=1, dtype=jnp.int32)


def write_pages(pages: Array, k: Array, v: Array, page_table: Array, index: Array, segment_ids: Array) -> Array:
  """pages with the real new tokens' k, v ([B, T, K, H], segment id > 0) of row b written from its slot
  index[b] on, packed (stored_slots; page page_table[b, slot // page_size], offset slot % page_size), as one
  scatter. Padding, and rows whose page is unassigned (the table's out-of-range id: finished, released or
  padding rows), are dropped, so they never touch a page another row owns."""
  b, t = k.shape[:2]
  page_size = pages.shape[1]
  slots_bt = stored_slots(segment_ids, index, page_table.shape[1] * page_size)
  col_bt = jnp.minimum(slots_bt // page_size, page_table.shape[1] - 1)
  page_bt = jnp.where(slots_bt // page_size < page_table.shape[1],
                      jnp.take_along_axis(page_table, col_bt, axis=1), pages.shape[0])
  kv = jnp.stack([k, v], axis=3).reshape(b, t, -1, k.shape[-1]).astype(pages.dtype)  # [B, T, 2K, H]
  return pages.at[page_bt, slots_bt % page_size].set(kv, mode="drop")


def write_rows(buffer: Array, update: Array, index: Array) -> Array:
  """buffer[b, index[b]:index[b]+T] = update[b] for every row b."""
  def one_row(buf, upd, i):
    start = (i,) + (0,) * (buf.ndim - 1)
    return jax.lax.dynamic_update_slice(buf, upd, start)
  return jax.vmap(one_row)(buffer, update, index)


def write_layer_rows(buffer: Array, update: Array, layer: Array | None, index: Array) -> Array:
  """buffer[layer, b, :, index[b]:index[b]+T] = update[b] (moved to [K, T, H]) for every row b, as one scatter.

  buffer is the whole stacked cache [layers, B, K, S, H] (or, with layer None, one layer's [B, K, S, H]),
  update [B, T, K, H]; writing into it (rather than into a per-layer slice that is then restacked) lets XLA
  update the carried buffer in place. Rows past the last slot are dropped (callers keep index + T <= slots).
  """
  b, t = update.shape[:2]
  rows_bt = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, t))
  slots_bt = index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
  # Advanced indices split by a slice index the result as [B, T, K, H], the update's own layout.
  if layer is None:
    return buffer.at[rows_bt, :, slots_bt].set(update, mode="drop")
  return buffer.at[layer, rows_bt, :, slots_bt].set(update, mode="drop")
