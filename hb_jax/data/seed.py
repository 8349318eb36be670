"""Seed pairs from Open Assistant (oasst1), selected as the paper did.

Rules: the first turn of each conversation tree only (a root prompter message and an assistant reply to
it), English only (`lang == "en"` on both), the assistant reply with human rank 0. Messages marked
`deleted` or with `review_result == false` are dropped (the export keeps them, flagged).

Inputs, auto-detected from the first record:
  - the flat message list (oasst1's `*.messages.jsonl[.gz]`, or the HF dataset rows): `message_id`,
    `parent_id`, `role` (prompter|assistant), `lang`, `rank`, `text`, ...
  - the nested trees (`*.trees.jsonl[.gz]`): `{"message_tree_id", "prompt": {..., "replies": [...]}}`
  - plain pairs: `instruction`, `output` (an Alpaca-style non-empty `input` is appended to the instruction)

The cap (default 3,200) is deterministic and order-free: pairs are sorted by sha1 of their content id
and the first N kept, so the same export always gives the same seed, whatever its line order.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Iterator

from etils import epath

from hb_jax.data import records

DEFAULT_MAX = 3200
FORMATS = ("oasst_messages", "oasst_trees", "pairs")


@dataclasses.dataclass
class SeedStats:
  format: str = ""
  read: records.ReadStats = dataclasses.field(default_factory=records.ReadStats)
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def to_dict(self) -> dict:
    return {"format": self.format, "read": self.read.to_dict(), "counts": dict(self.counts)}


def detect_format(record: dict) -> str:
  if "message_id" in record and "role" in record:
    return "oasst_messages"
  if isinstance(record.get("prompt"), dict):
    return "oasst_trees"
  if "instruction" in record and "output" in record:
    return "pairs"
  raise ValueError(f"expected an oasst1 message (message_id, role), an oasst1 tree (prompt: {{...}}) or a "
                   f"pair (instruction, output); found fields {sorted(record)[:12]}")


def _usable(msg: dict) -> bool:
  return not msg.get("deleted", False) and msg.get("review_result", True) is not False


def _is_text(value) -> bool:
  return isinstance(value, str) and bool(value.strip())


def _pair(instruction: str, output: str, **provenance) -> dict:
  return records.make_pair(instruction.strip(), output.strip(), "seed", **provenance)


def _from_messages(rows: Iterator[tuple[int, dict]], stats: SeedStats, where: str, strict: bool) -> list[dict]:
  roots: dict[str, dict] = {}
  best_reply: dict[str, dict] = {}  # parent message_id -> its rank-0 English assistant reply
  for lineno, m in rows:
    if not _usable(m):  # dropped whatever else it lacks (a deleted message may have an empty text)
      stats.counts["messages"] += 1
      stats.counts["dropped_deleted_or_rejected"] += 1
      continue
    for key in ("message_id", "role", "text"):
      if not _is_text(m.get(key)):
        if strict:
          raise records.RecordError(f"{where}:{lineno}: expected oasst1 message field {key!r}, found {m.get(key)!r}")
        stats.read.skip("missing_field")
        break
    else:
      stats.counts["messages"] += 1
      if m.get("parent_id") is None:
        if m["role"] != "prompter":
          stats.counts["dropped_root_not_prompter"] += 1
        elif m.get("lang") != "en":
          stats.counts["dropped_root_not_en"] += 1
        else:
          roots[m["message_id"]] = m
      elif m["role"] == "assistant" and m.get("rank") == 0 and m.get("lang") == "en":
        previous = best_reply.get(m["parent_id"])
        # Ranks are unique among siblings; if an export repeats rank 0, the smallest id wins, deterministically.
        if previous is None or m["message_id"] < previous["message_id"]:
          best_reply[m["parent_id"]] = m
  pairs = []
  for root_id in sorted(roots):
    reply = best_reply.get(root_id)
    if reply is None:
      stats.counts["dropped_no_rank0_en_reply"] += 1
      continue
    root = roots[root_id]
    pairs.append(_pair(root["text"], reply["text"], message_tree_id=root.get("message_tree_id", root_id),
                       prompt_message_id=root_id, reply_message_id=reply["message_id"]))
  return pairs


def _from_trees(rows: Iterator[tuple[int, dict]], stats: SeedStats, where: str, strict: bool) -> list[dict]:
  pairs = []
  for lineno, tree in rows:
    prompt = tree.get("prompt")
    if isinstance(prompt, dict) and not _usable(prompt):  # dropped even if its text is gone
      stats.counts["trees"] += 1
      stats.counts["dropped_deleted_or_rejected"] += 1
      continue
    if not isinstance(prompt, dict) or not _is_text(prompt.get("text")):
      if strict:
        raise records.RecordError(f"{where}:{lineno}: expected an oasst1 tree with prompt.text, found {str(prompt)[:80]!r}")
      stats.read.skip("missing_field")
      continue
    stats.counts["trees"] += 1
    if prompt.get("role", "prompter") != "prompter":
      stats.counts["dropped_root_not_prompter"] += 1
      continue
    if prompt.get("lang") != "en":
      stats.counts["dropped_root_not_en"] += 1
      continue
    replies = [r for r in prompt.get("replies") or []
               if isinstance(r, dict) and r.get("role") == "assistant" and r.get("rank") == 0
               and r.get("lang") == "en" and _usable(r) and _is_text(r.get("text"))]
    if not replies:
      stats.counts["dropped_no_rank0_en_reply"] += 1
      continue
    reply = min(replies, key=lambda r: str(r.get("message_id", "")))
    pairs.append(_pair(prompt["text"], reply["text"], message_tree_id=tree.get("message_tree_id", prompt.get("message_id")),
                       prompt_message_id=prompt.get("message_id"), reply_message_id=reply.get("message_id")))
  return pairs


def _from_pairs(rows: Iterator[tuple[int, dict]], stats: SeedStats, where: str, strict: bool) -> list[dict]:
  pairs = []
  for lineno, r in rows:
    if not (_is_text(r.get("instruction")) and _is_text(r.get("output"))):
      if strict:
        raise records.RecordError(f"{where}:{lineno}: expected non-empty string fields 'instruction' and 'output', "
                                  f"found instruction={str(r.get('instruction'))[:40]!r} output={str(r.get('output'))[:40]!r}")
      stats.read.skip("missing_field")
      continue
    instruction = r["instruction"]
    if _is_text(r.get("input")):
      instruction = instruction.rstrip() + "\n\n" + r["input"].strip()
    pairs.append(_pair(instruction, r["output"]))
  return pairs


def sort_key(pair: dict) -> str:
  """The cap's order: sha1 of the id, so a cap of N is a uniform, reproducible sample."""
  return hashlib.sha1(pair["id"].encode("utf-8")).hexdigest()


def select_seed(path: epath.PathLike, max_pairs: int | None = DEFAULT_MAX, strict: bool = True,
                stats: SeedStats | None = None) -> list[dict]:
  """Seed pairs (`id`, `instruction`, `output`, `source: "seed"`, provenance) from one export file."""
  stats = stats if stats is not None else SeedStats()
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"{path}: expected an oasst1 export (messages or trees JSONL, .gz ok) or a pairs "
                            "JSONL, found no file")
  rows = records.iter_jsonl(path, strict=strict, stats=stats.read)
  first = next(rows, None)
  if first is None:
    raise records.RecordError(f"{path}: expected oasst1 messages, trees or pairs, found no records")
  try:
    stats.format = detect_format(first[1])
  except ValueError as e:
    raise records.RecordError(f"{path}:{first[0]}: {e}") from None

  def all_rows():
    yield first
    yield from rows

  reader = {"oasst_messages": _from_messages, "oasst_trees": _from_trees, "pairs": _from_pairs}[stats.format]
  pairs = reader(all_rows(), stats, str(path), strict)
  unique = {}
  for p in pairs:
    unique.setdefault(p["id"], p)
  stats.counts["dropped_duplicate"] += len(pairs) - len(unique)
  ordered = sorted(unique.values(), key=sort_key)
  stats.counts["eligible"] = len(ordered)
  if max_pairs is not None:
    stats.counts["dropped_over_cap"] = max(0, len(ordered) - max_pairs)
    ordered = ordered[:max_pairs]
  stats.counts["kept"] = len(ordered)
  return ordered


def prepare_seed(input_path: epath.PathLike, output_path: epath.PathLike, max_pairs: int | None = DEFAULT_MAX,
                 strict: bool = True) -> SeedStats:
  """Selects and writes seed.jsonl atomically, with `<output>.stats.json` beside it."""
  if max_pairs is not None and max_pairs < 0:
    raise ValueError(f"prepare_seed: expected max_pairs >= 0 (0 or None: no cap), found {max_pairs}")
  stats = SeedStats()
  pairs = select_seed(input_path, max_pairs or None, strict, stats)
  if not pairs:  # an empty seed would only fail later, at the first training stage
    dropped = {k: v for k, v in stats.counts.items() if k.startswith("dropped_") and v}
    raise records.RecordError(f"{input_path}: expected at least one usable seed pair, found none "
                              f"(dropped: {dropped or 'nothing'}; read: {stats.read.to_dict()})")
  records.write_jsonl(output_path, pairs)
  records.write_json(stats_path(output_path), stats.to_dict())
  return stats


def stats_path(output_path: epath.PathLike) -> epath.Path:
  output_path = epath.Path(output_path)
  return output_path.parent / (output_path.name + ".stats.json")

