"""The demo world: a generated universe small enough for a tiny LLaMA on 2 CPU cores to learn.

The world has checkable tasks (capitals of invented countries, single-digit addition, kilometre -> metre
conversion, reversing three words). From one seed it produces:

  pretrain text   encyclopedia-style facts, worked examples and web chatter (the base model's corpus)
  seed pairs      a few human-quality (instruction, output) pairs, plus judging demonstrations: the curation
                  prompt around a candidate, answered with a short reasoning and `Score: k` (a 1M-parameter
                  model has no zero-shot judging ability, so the seed teaches it, as human data would)
  pool            unlabelled "web" segments: answers to a latent instruction (good) mixed with noise
                  (wrong answers, truncated answers, forum chatter, boilerplate, off-topic text)
  held-out        instructions with a checker (`check(task, output)`)
  truth           each pool segment's hidden kind; only the report reads it, never a stage's input

Everything is a pure function of `WorldConfig`; ids are content hashes (records.make_segment / make_pair).
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Any, Callable

from hb_jax.data import prompts, records

GOOD = "good"
NOISE_KINDS = ("wrong", "truncated", "forum", "boilerplate", "offtopic")
FAMILIES = ("capital", "add", "convert", "reverse")

_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sa", "ne", "bu", "dri", "fel", "gom", "pa", "zu",
              "hel", "mor", "ti", "qua", "ser", "lin", "do", "wex", "ya", "ro")
_WORDS = ("apple", "river", "stone", "cloud", "tiger", "lamp", "garden", "silver", "window", "forest",
          "candle", "rocket", "bridge", "pepper", "violin", "marble", "tulip", "anchor", "comet", "honey")
_NUMBER_WORDS = {}

# A compact judging rubric for the tiny demo model (the paper's Table-1 header is ~400 tokens of a
# 1,024-piece vocabulary, which would dominate every sequence); real configs use the paper's header.
COMPACT_CURATION_HEADER = (
  "Below is an instruction from an user and a candidate answer. Rate the answer from 1 to 5. 5: a correct "
  "and complete answer written by an AI Assistant. 3: correct but written like a forum post. 1: wrong, "
  "incomplete, off-topic or promotional. Write \"Score: <rating>\" in the first line, then a brief "
  "reasoning.\n\n")
DEMO_STYLE = dataclasses.replace(prompts.DEFAULT_STYLE, curation_header=COMPACT_CURATION_HEADER)

_REASONS = {
  GOOD: ("The answer is correct and complete.", 5),
  "forum": ("The answer is correct but reads like a forum post.", 3),
  "wrong": ("The answer is wrong.", 1),
  "truncated": ("The answer is incomplete.", 1),
  "boilerplate": ("The answer is promotional text.", 1),
  "offtopic": ("The answer is off-topic.", 1),
}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  seed: int = 0
  num_countries: int = 30
  seed_per_family: int = 6  # human seed pairs per task family in seed_families
  # The families the human seed covers (its pairs and judging demonstrations). The pool and the held-out set
  # always span every family: a seed that covers part of what the web holds is the paper's setting (3,200
  # OASST pairs against ClueWeb), and held-out families outside the seed measure what backtranslation adds
  # (the demo's 1M-parameter backward model does not carry the seed's families over to others: see
  # docs/pipeline.md).
  seed_families: tuple[str, ...] = FAMILIES
  rating_demos: int = 60  # judging demonstrations in the seed
  pool_size: int = 900
  good_fraction: float = 0.35  # the rest is noise, spread evenly over NOISE_KINDS
  heldout_per_family: int = 40
  pretrain_docs: int = 3000
  # Share of countries whose capital is written only in the unlabelled pool: the base model never reads it
  # and the seed never asks it. The web corpus holds knowledge the seed lacks (the paper's setting: ClueWeb
  # against 3,200 OASST pairs), so held-out questions about these countries can be answered only by a model
  # that learned from backtranslated pool segments (the demo's backward model does not carry them over: see
  # docs/pipeline.md). Held-out items on them are reported as "capital-web".
  web_only_fraction: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.web_only_fraction < 1.0:
      raise ValueError(f"world.web_only_fraction must be in [0, 1), found {self.web_only_fraction}")
    if not 0.0 < self.good_fraction < 1.0:
      raise ValueError(f"world.good_fraction must be in (0, 1), found {self.good_fraction}")
    for k in ("num_countries", "pool_size", "pretrain_docs"):
      if getattr(self, k) <= 0:
        raise ValueError(f"world.{k} must be positive, found {getattr(self, k)}")
    if not self.seed_families or set(self.seed_families) - set(FAMILIES):
      raise ValueError(f"world.seed_families must be a non-empty subset of {FAMILIES}, found {self.seed_families}")
    if self.num_countries > len(_SYLLABLES) ** 2:
      raise ValueError(f"world.num_countries must be <= {len(_SYLLABLES) ** 2}, found {self.num_countries}")


@dataclasses.dataclass(frozen=True)
class Task:
  """One latent instruction and its gold answer; `args` are what the checker needs."""
  family: str
  instruction: str
  answer: str  # the assistant-style gold output
  key: str  # the value the checker looks for
  args: tuple


@dataclasses.dataclass
class World:
  config: WorldConfig
  capitals: dict[str, str]
  web_only: frozenset[str]  # countries whose capital only the pool states (see WorldConfig.web_only_fraction)
  seed: list[dict]
  pool: list[dict]  # segments (id, text, source)
  truth: dict[str, dict]  # segment id -> {"kind", "family", "instruction"}
  heldout: list[dict]  # {"id", "family", "instruction", "key", "args"}
  pretrain: list[str]

  @property
  def base_rate_good(self) -> float:
    return sum(t["kind"] == GOOD for t in self.truth.values()) / max(1, len(self.truth))


def _name(rng: random.Random, used: set[str], parts: int) -> str:
  while True:
    n = "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()
    if n not in used:
      used.add(n)
      return n


def _capitals(cfg: WorldConfig) -> dict[str, str]:
  rng = random.Random(f"capitals-{cfg.seed}")
  used: set[str] = set()
  return {_name(rng, used, 3): _name(rng, used, 2) for _ in range(cfg.num_countries)}


# ---------------------------------------------------------------------------------------------- task families
def _capital_task(rng, caps, country=None) -> Task:
  country = country or rng.choice(sorted(caps))
  form = rng.choice(("What is the capital of {c}?", "Name the capital city of {c}."))
  cap = caps[country]
  return Task("capital", form.format(c=country), f"The capital of {country} is {cap}.", cap, (country,))


def _add_task(rng, caps, ab=None) -> Task:
  a, b = ab or (rng.randint(1, 9), rng.randint(1, 9))
  form = rng.choice(("What is {a} plus {b}?", "Add {a} and {b}."))
  return Task("add", form.format(a=a, b=b), f"{a} plus {b} is {a + b}.", str(a + b), (a, b))


def _convert_task(rng, caps, n=None) -> Task:
  n = n or rng.randint(2, 99)
  form = rng.choice(("How many meters are in {n} kilometers?", "Convert {n} kilometers to meters."))
  return Task("convert", form.format(n=n), f"{n} kilometers is {n * 1000} meters.", str(n * 1000), (n,))


def _reverse_task(rng, caps, words=None) -> Task:
  words = words or tuple(rng.sample(_WORDS, 3))
  form = rng.choice(("Reverse the order of these words: {w}", "Write these words backwards: {w}"))
  rev = " ".join(reversed(words))
  return Task("reverse", form.format(w=" ".join(words)), f"Reversed, the words are: {rev}.", rev, tuple(words))


_MAKERS: dict[str, Callable[..., Task]] = {"capital": _capital_task, "add": _add_task,
                                           "convert": _convert_task, "reverse": _reverse_task}


def _wrong(rng, task: Task, caps) -> str:
  if task.family == "capital":
    other = rng.choice(sorted(v for v in caps.values() if v != task.key))
    return task.answer.replace(task.key, other)
  if task.family == "add":
    a, b = task.args
    off = rng.choice((-2, -1, 1, 2, 3))
    return f"{a} plus {b} is {a + b + off}."
  if task.family == "convert":
    (n,) = task.args
    return f"{n} kilometers is {n * rng.choice((10, 100))} meters."
  words = list(task.args)
  rng.shuffle(words)
  if words == list(reversed(task.args)):
    words = list(task.args)
  return f"Reversed, the words are: {' '.join(words)}."


def _truncated(task: Task) -> str:
  cut = task.answer.rfind(" ", 0, task.answer.find(task.key.split()[0]))
  return task.answer[:max(cut, 5)].rstrip()


def _forum(rng, task: Task) -> str:
  opener = rng.choice(("lol idk but", "my cousin says", "not sure tbh,", "someone on here said"))
  closer = rng.choice(("anyway thx for reading", "reply below if u know", "just my opinion lol",
                       "see my other posts"))
  return f"{opener} {task.key} i think. {closer}"


def _boilerplate(rng) -> str:
  return " ".join(rng.sample((
    "Subscribe to our newsletter for weekly deals.", "Click here to read more.", "All rights reserved.",
    "Accept cookies to continue.", "Share this page on social media.", "Free shipping on orders today.",
    "Sign in to see your account.", "Back to top."), 3))


def _offtopic(rng, caps) -> str:
  country = rng.choice(sorted(caps))
  return rng.choice((f"{country} has many rivers and a mild climate.",
                     f"The people of {country} enjoy music and long walks.",
                     f"Travel guides to {country} are sold in every shop.",
                     f"The weather today is calm and the sky is blue."))


def _segment_text(rng, kind: str, task: Task, caps) -> str:
  if kind == GOOD:
    return task.answer
  if kind == "wrong":
    return _wrong(rng, task, caps)
  if kind == "truncated":
    return _truncated(task)
  if kind == "forum":
    return _forum(rng, task)
  if kind == "boilerplate":
    return _boilerplate(rng)
  return _offtopic(rng, caps)


# ----------------------------------------------------------------------------------------------- the world
def _heldout_tasks(cfg: WorldConfig, caps) -> list[Task]:
  """Held-out instances: fixed argument sets that the seed never uses."""
  rng = random.Random(f"heldout-{cfg.seed}")
  out, seen = [], set()
  for fam in FAMILIES:
    n = 0
    while n < cfg.heldout_per_family:
      t = _MAKERS[fam](rng, caps)
      if (fam, t.args) in seen and fam != "capital":
        continue
      seen.add((fam, t.args))
      out.append(t)
      n += 1
  return out


def _web_only(cfg: WorldConfig, caps) -> frozenset[str]:
  rng = random.Random(f"web-only-{cfg.seed}")
  return frozenset(rng.sample(sorted(caps), round(cfg.web_only_fraction * len(caps))))


def is_judging_demo(pair: dict) -> bool:
  """A seed pair that demonstrates the judging task (its output starts with the rating), not an answer."""
  return pair["output"].startswith("Score: ")


def build_world(cfg: WorldConfig = WorldConfig(), curation_header: str = COMPACT_CURATION_HEADER) -> World:
  """The world for `cfg`; judging demonstrations use `curation_header` (the one curation will prompt with)."""
  caps = _capitals(cfg)
  web_only = _web_only(cfg, caps)
  known = {c: k for c, k in caps.items() if c not in web_only}  # what pretraining and the seed may state
  heldout = _heldout_tasks(cfg, caps)
  heldout_args = {(t.family, t.args) for t in heldout if t.family != "capital"}
  rng = random.Random(f"world-{cfg.seed}")

  def fresh(fam: str, world_caps=known) -> Task:
    # Seed and pool tasks avoid the held-out argument sets (capitals excepted: there are few countries,
    # and knowing a capital from pretraining or the pool is the point of that family).
    while True:
      t = _MAKERS[fam](rng, world_caps)
      if (fam, t.args) not in heldout_args:
        return t

  seed: list[dict] = []
  seen_seed: set[str] = set()
  for fam in cfg.seed_families:
    while sum(r.get("_family") == fam for r in seed) < cfg.seed_per_family:
      t = fresh(fam)
      rec = records.make_pair(t.instruction, t.answer, "seed")
      if rec["id"] not in seen_seed:
        seen_seed.add(rec["id"])
        seed.append({**rec, "_family": fam})
  kinds = (GOOD,) + NOISE_KINDS
  for i in range(cfg.rating_demos):
    kind = kinds[i % len(kinds)]
    t = fresh(rng.choice(cfg.seed_families))
    text = _segment_text(rng, kind, t, known)
    reason, score = _REASONS[kind]
    rec = records.make_pair(curation_header + f"{t.instruction}\n{text}",
                            f"Score: {score}\n{reason}", "seed")
    if rec["id"] not in seen_seed:
      seen_seed.add(rec["id"])
      seed.append(rec)
  for r in seed:
    r.pop("_family", None)

  pool, truth = [], {}
  n_good = round(cfg.good_fraction * cfg.pool_size)
  plan = [GOOD] * n_good + [NOISE_KINDS[i % len(NOISE_KINDS)] for i in range(cfg.pool_size - n_good)]
  rng.shuffle(plan)
  for kind in plan:
    # The family is drawn once per segment, so every family gets its share of the pool even when it has
    # few distinct texts (a good capital segment is one sentence per country); identical texts collapse to
    # one id, so a repeat draws again within the family.
    fam = rng.choice(FAMILIES)
    for _ in range(100):
      t = fresh(fam, caps)
      seg = records.make_segment(_segment_text(rng, kind, t, caps), "synthetic-web")
      if seg["id"] not in truth:
        break
    else:
      continue
    pool.append(seg)
    truth[seg["id"]] = {"kind": kind, "family": t.family, "instruction": t.instruction, "key": t.key,
                        "args": list(t.args)}

  # One item per distinct instruction: the capital family can draw a country twice, and a repeated id would
  # count that item twice in every accuracy.
  held = records.unique_by_id(
      {"id": records.content_id("heldout", t.instruction), "family": t.family, "instruction": t.instruction,
       "key": t.key, "args": list(t.args), "group": _group(t, web_only)} for t in heldout)
  return World(cfg, caps, web_only, seed, pool, truth, held, _pretrain_text(cfg, caps, web_only, heldout_args))


def _group(t: Task, web_only) -> str:
  """The report's breakdown of a held-out item: its family, with capitals the pool alone states apart."""
  return "capital-web" if t.family == "capital" and t.args[0] in web_only else t.family


# Page layouts of the FAQ (question first) and quiz (answer first) pretraining documents.
_QA_LAYOUTS = ("Question: {q} Answer: {a}", "Q: {q}\nA: {a}\n", "{q}\n{a}\n", "Someone asked: {q} Reply: {a}",
               "<question>{q}</question> <answer>{a}</answer>", "- {q}\n  {a}\n", "FAQ. {q} -- {a}")
_AQ_LAYOUTS = ("Answer: {a} Question: {q}", "A: {a}\nQ: {q}\n", "{a}\nThis answers: {q}\n",
               "Reply: {a} Someone asked: {q}", "<answer>{a}</answer> <question>{q}</question>",
               "- {a}\n  asked as: {q}\n", "Quiz. {a} -- the question was: {q}")

# Page chrome that forum and FAQ pages put between a question and its answer.
_PAGE_CHROME = ("Posted by a reader in the help forum.", "This question was asked last week.",
                "Three people found this useful.", "Sorted by the most helpful replies first.",
                "A moderator marked this as solved.", "Please be kind and stay on topic.",
                "Reply below or share this page.", "Updated yesterday by the site team.")


def _pretrain_text(cfg: WorldConfig, caps, web_only=frozenset(), exclude=frozenset()) -> list[str]:
  """Documents the base model reads: facts in prose, worked examples, and web chatter (no pool text).

  Every country and city is named, but no page ties a `web_only` country to its capital: the base model
  knows the names (a model that never read a name cannot copy it: with the web-only countries unnamed, the
  backward model asked about none of them), not the fact."""
  rng = random.Random(f"pretrain-{cfg.seed}")
  docs = []
  countries = sorted(caps)
  hidden_caps = sorted(caps[c] for c in web_only)
  caps_known = {c: k for c, k in caps.items() if c not in web_only}

  def country_fact(c: str) -> str:
    if c not in web_only:
      return f"{c} is a country. The capital of {c} is {caps[c]}. {caps[c]} is a large city."
    cities = [k for k in hidden_caps if k != caps[c]] or [k for k in sorted(caps.values()) if k != caps[c]]
    return f"{c} is a country." + (f" {rng.choice(cities)} is a large city." if cities else "")  # not its capital

  for i in range(cfg.pretrain_docs):
    kind = i % 8
    if kind >= 6:
      # FAQ and quiz pages: the world's questions beside their answers, in both orders and in many layouts.
      # They give the base model the copying skill (names and numbers between question and answer) that
      # backtranslation needs, as web pretraining gives LLaMA; the layouts vary so that the skill does not
      # hang on one template (a model that copies only after "Answer:" cannot copy after "[/INST]"). The
      # chat format, tags and answering on request come from finetuning.
      tasks = []
      while len(tasks) < 3:
        t = _MAKERS[rng.choice(FAMILIES)](rng, caps_known)
        if (t.family, t.args) not in exclude:  # held-out instances stay unseen as Q/A text
          tasks.append(t)
      layouts = _QA_LAYOUTS if kind == 6 else _AQ_LAYOUTS  # quiz pages give the answer first
      layout = rng.choice(layouts)
      entries = []
      for t in tasks:
        # Half the entries carry page chrome (a byline, a vote count) between the question or answer and what
        # follows, as forum pages do: copying must reach back over unrelated text, which the chat format needs
        # (`[INST] {q}\n\n{tag} [/INST] {a}` puts the tag between them). Measured on the earlier world, a
        # model finetuned with the tag copied ~0 second operands; without the tag, 0.23 of additions were right.
        first, second = (t.instruction, t.answer) if kind == 6 else (t.answer, t.instruction)
        if rng.random() < 0.5:
          first += rng.choice((" ", "\n", "\n\n")) + rng.choice(_PAGE_CHROME)
        q, a = (first, second) if kind == 6 else (second, first)
        entries.append(layout.format(q=q, a=a))
      docs.append(" ".join(entries))
      continue
    if kind == 0:
      cs = rng.sample(countries, 3)
      docs.append(" ".join(country_fact(c) for c in cs))
    elif kind == 1:
      docs.append(" ".join(_add_task(rng, caps).answer for _ in range(4)))
    elif kind == 2:
      docs.append(" ".join(_convert_task(rng, caps).answer for _ in range(3)))
    elif kind == 3:
      ws = [tuple(rng.sample(_WORDS, 3)) for _ in range(3)]
      docs.append(" ".join(f"The words {' '.join(w)} in reverse order are {' '.join(reversed(w))}." for w in ws))
    elif kind == 4:
      docs.append(_boilerplate(rng) + " " + _forum(rng, _capital_task(rng, caps_known)))
    else:
      docs.append(_offtopic(rng, caps) + " " + _offtopic(rng, caps))
  return docs


# ------------------------------------------------------------------------------------------------- checking
_INSTRUCTION_RES = (
  ("capital", re.compile(r"^(?:What is the capital of|Name the capital city of) ([A-Z][a-z]+)[?.]$")),
  ("add", re.compile(r"^(?:What is (\d+) plus (\d+)\?|Add (\d+) and (\d+)\.)$")),
  ("convert", re.compile(r"^(?:How many meters are in (\d+) kilometers\?|Convert (\d+) kilometers to meters\.)$")),
  ("reverse", re.compile(r"^(?:Reverse the order of these words|Write these words backwards): ([a-z]+) ([a-z]+) ([a-z]+)$")),
)


def parse_instruction(text: str) -> tuple[str, list] | None:
  """(family, args) of an instruction written in one of the world's forms, else None."""
  text = text.strip()
  for fam, rx in _INSTRUCTION_RES:
    m = rx.match(text)
    if m:
      args = [g for g in m.groups() if g is not None]
      return fam, [int(a) if a.isdigit() else a for a in args]
  return None


def pair_is_good(instruction: str, truth: dict) -> bool:
  """Hidden label of a candidate: its segment truly answers, and the generated instruction asks exactly
  the segment's latent task (any of the world's phrasings)."""
  return truth["kind"] == GOOD and parse_instruction(instruction) == (truth["family"], list(truth["args"]))

_ENTITY_RE = re.compile(r"[A-Za-z]+|\d+")


def check(item: dict, output: str, capitals: dict[str, str]) -> bool:
  """True if `output` gives the held-out item's answer and no competing answer of the same type.

  capital: the gold capital appears and no other capital does; add/convert: the last number is the gold
  value; reverse: the three words appear in reversed order and nothing else from the word list follows.
  """
  toks = _ENTITY_RE.findall(output)
  fam, key = item["family"], item["key"]
  if fam == "capital":
    caps = set(capitals.values())
    named = [t for t in toks if t in caps]
    return bool(named) and set(named) == {key}
  if fam in ("add", "convert"):
    nums = [t for t in toks if t.isdigit()]
    return bool(nums) and nums[-1] == key
  if fam == "reverse":
    listed = [t for t in toks if t in _WORDS]
    return listed[-3:] == key.split() and len(listed) >= 3
  raise ValueError(f"check: unknown family {fam!r}")


def world_summary(world: World) -> dict[str, Any]:
  kinds: dict[str, int] = {}
  for t in world.truth.values():
    kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
  return {"seed": len(world.seed), "pool": len(world.pool), "heldout": len(world.heldout),
          "base_rate_good": world.base_rate_good, "pool_kinds": kinds, "countries": len(world.capitals),
          "web_only_countries": len(world.web_only)}
