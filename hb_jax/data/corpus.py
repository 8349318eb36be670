"""Web corpus -> segments: the unlabelled side of instruction backtranslation.

A segment is the text that follows an HTML header (h1-h6) up to the next header, with navigation, adverts
and other boilerplate removed. Inputs: HTML files, WARC files (ClueWeb's WARC/0.18 and Common Crawl's
WARC/1.x; gz too), JSONL (a `text` field is one segment; an `html` field is parsed as HTML), plain text
(paragraphs packed up to the length bound), and TFDS datasets read with `tfds.data_source`
(`tfds:NAME[/CONFIG][:SPLIT]`, or `tfds:/path/to/builder_dir[:SPLIT]`).

Filters, each counted, in order: header heuristics (empty, too long, share of capitals, navigation words),
length bounds (600-3,000 chars by default, like public reproductions), language id (English, py3langid,
model inside the wheel), exact duplicates (8-byte blake2b of the lowercased, whitespace-collapsed text),
near duplicates (MinHash over word 5-grams + banded LSH; first occurrence wins).

Parallelism: the input is cut into work units (a file, or a range of TFDS records). Workers do all the
per-segment work (parse, filter, langid, signatures); the parent keeps only the dedup index, so memory is
that index (about 9 ints in sets per kept segment; `bench/corpus.py` measures bytes per segment) and the
output order is the input order whatever the worker count. Workers are this machine's processes
(runner 'local'), or an Apache Beam pipeline (runner 'beam', hb_jax/data/corpus_beam.py) whose per-unit
results come back to the same dedup pass, so both runners write the same segments file.

A folder or glob is walked for files of the known kinds; anything else there (images, scripts, stylesheets
of a mirrored site) is skipped and counted (`files_skipped_unknown_type`). A `.json` file found that way is
read as JSONL only if its first line is a record with a text or html field; a `.json` that is no corpus (a
site's search index or settings, e.g. Sphinx's `_static/`) is skipped and counted (`files_skipped_json`),
as the walk already skips the site's other files. A file named on the command line is always read, and a
bad record in it is an error naming file:line.

Libraries: selectolax (lexbor) for HTML, FastWARC for WARC, datasketch for MinHash, py3langid.
"""
from __future__ import annotations

import codecs
import collections
import dataclasses
import glob as globlib
import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import time
import zlib
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from etils import epath

from hb_jax.data import records

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
WARC_SUFFIXES = (".warc", ".arc")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text")
COMPRESSED = (".gz", ".lz4")

# Removed with their content before segmentation.
DROP_TAGS = ["script", "style", "noscript", "nav", "footer", "aside", "form", "iframe", "svg", "button",
             "select", "template", "object", "embed", "canvas", "audio", "video", "figure", "menu", "dialog"]
# An element whose class/id has one of these tokens (split on non-letters) is boilerplate.
BOILERPLATE_TOKENS = frozenset("""nav navbar navigation menu breadcrumb breadcrumbs sidebar footer cookie cookies
  banner advert adverts advertisement ad ads adsense sponsor sponsored promo share sharing social comment comments
  related popup modal subscribe newsletter login signin signup pagination pager widget masthead toolbar""".split())
BOILERPLATE_ROLES = frozenset({"navigation", "banner", "complementary", "contentinfo", "search", "menu", "menubar"})
BLOCK_TAGS = "p,div,li,br,tr,td,th,pre,blockquote,section,article,ul,ol,dl,dd,dt,table,main,hr,header,address,center"
# A header (or a short paragraph) made of these is navigation, not content.
NAV_WORDS = frozenset("""menu navigation nav login logout log sign signin signup register share advertisement advertisements
  advert ads sponsored cookie cookies subscribe newsletter search comments comment reply replies follow contact
  privacy terms copyright footer sidebar categories category tags archives archive sitemap skip home""".split())
NAV_PHRASES = frozenset({"related posts", "recent posts", "popular posts", "you may also like", "leave a reply",
                         "leave a comment", "post navigation", "share this", "about us", "contact us", "follow us",
                         "read more", "more stories", "trending now", "log in", "sign up", "sign in", "main menu"})

_MARK_HEADER = "\x1e"   # header text is wrapped as \x1e{level}\x1f{text}\x1e
_MARK_FIELD = "\x1f"
_MARK_BLOCK = "\x1d"    # paragraph boundary
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WS_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_SPLIT_TOKENS_RE = re.compile(r"[^a-z]+")

RUNNERS = ("local", "beam")


class CorpusError(ValueError):
  """A corpus job that cannot run as asked: an input of unknown kind, nothing kept, an unreadable page."""


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  min_chars: int = 600
  max_chars: int = 3000
  header_max_chars: int = 200
  header_max_caps: float = 0.5        # share of upper-case letters among a header's letters
  header_caps_min_letters: int = 4    # shorter headers ("FAQ", "USA") are not judged on capitals
  nav_max_words: int = 5              # a header/paragraph this short with a navigation word is navigation
  lang: str = "en"
  lang_min_prob: float = 0.5
  lang_chars: int = 600               # langid reads this many leading characters (its cost is linear)
  near_dup_threshold: float = 0.8     # estimated Jaccard of word 5-gram sets
  num_perm: int = 128
  shingle_words: int = 5
  minhash_seed: int = 1
  text_field: str = "text"
  html_field: str = "html"
  tfds_chunk: int = 2000              # TFDS records per work unit
  tfds_data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class Section:
  header: str | None   # None for inputs without headers (JSONL text, plain text)
  level: int
  text: str
  paragraphs_dropped: int = 0


# ---------------------------------------------------------------- HTML

def _norm_ws(s: str) -> str:
  return _WS_RE.sub(" ", s).strip()


def _is_boilerplate_node(node) -> bool:
  attrs = node.attributes
  role = (attrs.get("role") or "").lower()
  if role in BOILERPLATE_ROLES or attrs.get("aria-hidden") == "true" or "hidden" in attrs:
    return True
  names = ((attrs.get("class") or "") + " " + (attrs.get("id") or "")).lower()
  return any(t in BOILERPLATE_TOKENS for t in _SPLIT_TOKENS_RE.split(names) if t)


# Permalink anchors that documentation generators put after a header or an API signature: Sphinx and MkDocs
# `<a class="headerlink" href="#x">¶</a>`, Docusaurus `hash-link`, anchor.js, Hugo `#`. Any in-page link whose
# text has no letter or digit is one (a symbol only); footnote references (`[1]`) keep their digits.
PERMALINK_SELECTOR = "a.headerlink,a[href^='#']"


def _is_permalink(node) -> bool:
  if "headerlink" in (node.attributes.get("class") or "").split():
    return True
  return not any(c.isalnum() for c in node.text(deep=True))


def looks_like_navigation(text: str, max_words: int) -> bool:
  low = _norm_ws(text).lower().strip(" :|>-»·•")
  if low in NAV_PHRASES:
    return True
  words = _WORD_RE.findall(low)
  return len(words) <= max_words and any(w in NAV_WORDS for w in words)


def html_sections(html: str | bytes, config: CorpusConfig = CorpusConfig()) -> list[Section]:
  """Sections of a page: each header and the cleaned text after it, in document order.

  Boilerplate goes first (DROP_TAGS, and elements whose class/id/role says nav/ad/share/...). Then the
  headers and block elements are marked in place and the body's text is read once, so inline markup
  never splits words and block markup always splits paragraphs. Text before the first header is no
  segment. Short paragraphs made of navigation words ("Share", "Log in | Sign up") are dropped.
  """
  from selectolax.lexbor import LexborHTMLParser
  if isinstance(html, bytes):
    html = decode_html(html)
  html = _CONTROL_RE.sub(" ", html)  # our markers are control characters: none may come from the page
  tree = LexborHTMLParser(html)
  root = tree.body
  if root is None:
    return []
  tree.strip_tags(DROP_TAGS)
  for node in tree.css(PERMALINK_SELECTOR):
    if _is_permalink(node):
      node.decompose()
  for node in tree.css("[class],[id],[role],[aria-hidden],[hidden]"):
    if _is_boilerplate_node(node):
      node.decompose()
  for node in tree.css("h1,h2,h3,h4,h5,h6"):
    text = node.text(deep=True, separator=" ", strip=True)
    node.replace_with(f"{_MARK_HEADER}{node.tag[1]}{_MARK_FIELD}{text}{_MARK_HEADER}")
  for node in tree.css(BLOCK_TAGS):
    node.insert_before(_MARK_BLOCK)
    node.insert_after(_MARK_BLOCK)
  flat = root.text(deep=True, separator="")
  sections: list[Section] = []
  header, level, paragraphs, dropped = None, 0, [], 0

  def close():
    if header is not None:
      sections.append(Section(header, level, "\n".join(paragraphs), dropped))

  for i, part in enumerate(flat.split(_MARK_HEADER)):
    if i % 2 == 1:  # a header: "{level}\x1f{text}"
      close()
      lvl, _, text = part.partition(_MARK_FIELD)
      header, level, paragraphs, dropped = _norm_ws(text), int(lvl), [], 0
      continue
    if header is None:
      continue
    for para in part.split(_MARK_BLOCK):
      para = _norm_ws(para)
      if not para:
        continue
      if looks_like_navigation(para, config.nav_max_words):
        dropped += 1
      else:
        paragraphs.append(para)
  close()
  return sections


_CHARSET_RE = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.IGNORECASE)


def decode_html(data: bytes, charset: str | None = None) -> str:
  """Bytes to text: a byte-order mark, else the HTTP charset, else a <meta charset>, else UTF-8; undecodable
  bytes replaced. As in HTML5's sniffing, a BOM wins, and a <meta> naming UTF-16 means UTF-8 (a page whose
  meta tag can be read as ASCII is not UTF-16)."""
  for bom, enc in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
    if data.startswith(bom):
      return data[len(bom):].decode(enc, errors="replace")
  candidates = [charset] if charset else []
  m = _CHARSET_RE.search(data[:4096])
  if m:
    meta = m.group(1).decode("ascii", "ignore")
    candidates.append("utf-8" if meta.lower().replace("_", "-").startswith("utf-16") else meta)
  for enc in candidates:
    try:
      return data.decode(enc)
    except (LookupError, UnicodeDecodeError):
      continue
  return data.decode("utf-8", errors="replace")


def text_sections(text: str, config: CorpusConfig = CorpusConfig()) -> list[Section]:
  """Plain text has no headers: paragraphs (blank-line separated) packed greedily up to max_chars."""
  sections, current = [], []
  size = 0
  for para in re.split(r"\n\s*\n", text):
    para = para.strip()
    if not para:
      continue
    if current and size + len(para) + 1 > config.max_chars:
      sections.append(Section(None, 0, "\n".join(current)))
      current, size = [], 0
    current.append(para)
    size += len(para) + 1
  if current:
    sections.append(Section(None, 0, "\n".join(current)))
  return sections


# ---------------------------------------------------------------- inputs

@dataclasses.dataclass(frozen=True)
class Document:
  content: str | bytes
  kind: str            # "html" or "text" (text that is one segment) or "plain" (text to pack)
  url: str | None = None
  charset: str | None = None


@dataclasses.dataclass(frozen=True)
class WorkUnit:
  """One file, or records [start, stop) of a TFDS split; `index` fixes the output order."""
  index: int
  kind: str            # html | warc | jsonl | text | tfds
  path: str
  start: int = 0
  stop: int = 0
  split: str = ""


def _strip_compression(name: str) -> str:
  for c in COMPRESSED:
    if name.endswith(c):
      return name[: -len(c)]
  return name


def file_kind(path: str) -> str | None:
  base = os.path.basename(path).lower()
  name = _strip_compression(base)
  if name.endswith(WARC_SUFFIXES):
    return "warc"  # the WARC reader decompresses .gz and .lz4 itself
  if base.endswith(".lz4"):
    return None  # other readers un-gzip only; reading lz4 bytes as a page would lose it silently
  if name.endswith(HTML_SUFFIXES):
    return "html"
  if name.endswith(JSONL_SUFFIXES):
    return "jsonl"
  if name.endswith(TEXT_SUFFIXES):
    return "text"
  return None


def parse_tfds_spec(spec: str) -> tuple[str, str]:
  """`tfds:NAME/CONFIG:SPLIT` or `tfds:/builder/dir:SPLIT` -> (name or dir, split); split defaults to train."""
  body = spec[len("tfds:"):]
  name, sep, split = body.rpartition(":")
  if not sep or "/" in split or not name:
    name, split = body, "train"
  if not name:
    raise CorpusError(f"expected tfds:NAME[/CONFIG][:SPLIT], found {spec!r}")
  return name, split


def _tfds_source(name: str, split: str, config: CorpusConfig):
  import tensorflow_datasets as tfds
  if name.startswith("/") or "://" in name or os.path.isdir(name):
    return tfds.builder_from_directory(name).as_data_source(split=split)
  return tfds.data_source(name, split=split, data_dir=config.tfds_data_dir)


def _walk_files(directory: epath.Path) -> Iterator[str]:
  # epath's rglob refuses `**` (thousands of requests on GCS); walk explicitly instead.
  for child in directory.iterdir():
    if child.is_dir():
      yield from _walk_files(child)
    else:
      yield os.fspath(child)


def _json_holds_records(path: str, config: CorpusConfig) -> bool:
  """Whether a `.json` file is JSONL of corpus records: its first non-blank line (read up to 4 MiB) is an
  object with a string text or html field. A JSON document spread over lines, or a one-line object of
  other fields (a search index, a site's settings), is not."""
  with records.open_bytes(path) as f:
    for _ in range(16):
      line = f.readline(1 << 22)
      if not line:
        return False
      if line.strip():
        break
    else:
      return False
  try:
    first = json.loads(line)
  except (ValueError, UnicodeDecodeError):
    return False
  return isinstance(first, dict) and any(isinstance(first.get(k), str) for k in (config.text_field, config.html_field))


def _corpus_files(found: Iterable[str], config: CorpusConfig, skipped: collections.Counter) -> list[str]:
  """The files of a folder walk or a glob that are corpus files; the others counted by why (module docstring)."""
  files = []
  for f in found:
    if not file_kind(f):
      skipped["files_skipped_unknown_type"] += 1
    elif _strip_compression(os.path.basename(f).lower()).endswith(".json") and not _json_holds_records(f, config):
      skipped["files_skipped_json"] += 1
    else:
      files.append(f)
  return files


def plan_units(inputs: Sequence[str], config: CorpusConfig = CorpusConfig(),
               skipped: collections.Counter | None = None) -> list[WorkUnit]:
  """Expands each input (file, folder, glob, tfds spec) into ordered work units.

  A folder is walked recursively and a glob expanded, each in sorted order; files there that are no corpus
  are skipped and counted in `skipped` (module docstring); a named file of unknown type is an error.
  """
  units: list[WorkUnit] = []
  skipped = skipped if skipped is not None else collections.Counter()

  def add(kind, path, **kw):
    units.append(WorkUnit(len(units), kind, path, **kw))

  for spec in inputs:
    if spec.startswith("tfds:"):
      name, split = parse_tfds_spec(spec)
      n = len(_tfds_source(name, split, config))
      for start in range(0, n, config.tfds_chunk):
        add("tfds", name, start=start, stop=min(n, start + config.tfds_chunk), split=split)
      continue
    path = epath.Path(spec)
    if any(c in spec for c in "*?["):
      matches = sorted(str(p) for p in (globlib.glob(spec, recursive=True) if records.is_local(spec)
                                        else epath.Path("/").glob(spec)))
      files = _corpus_files((m for m in matches if epath.Path(m).is_file()), config, skipped)
    elif path.is_dir():
      files = _corpus_files(sorted(_walk_files(path)), config, skipped)
    elif path.exists():
      if file_kind(spec) is None:
        raise CorpusError(f"{spec}: expected a file ending in one of {HTML_SUFFIXES + WARC_SUFFIXES + JSONL_SUFFIXES + TEXT_SUFFIXES} "
                         f"(optionally .gz; WARC also .lz4), found {os.path.basename(spec)!r}")
      files = [spec]
    else:
      raise FileNotFoundError(f"expected a file, folder, glob or tfds:NAME:SPLIT, found nothing at {spec!r}")
    if not files:
      kinds = ", ".join(HTML_SUFFIXES + WARC_SUFFIXES + JSONL_SUFFIXES + TEXT_SUFFIXES)
      raise FileNotFoundError(f"{spec}: expected at least one corpus file ({kinds}), found none "
                              f"(skipped: {dict(skipped) or 'nothing'})")
    for f in files:
      add(file_kind(f), f)
  return units


def _warc_documents(path: str) -> Iterator[Document | str]:
  from fastwarc.warc import ArchiveIterator, WarcRecordType
  with epath.Path(path).open("rb") as f:  # FastWARC detects gzip/lz4 members itself
    # strict_mode=False accepts ClueWeb09/12's WARC/0.18 headers.
    for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True, strict_mode=False):
      http = rec.http_headers
      ctype = (http.get("Content-Type") or "") if http is not None else ""
      if ctype and "html" not in ctype.lower():
        yield "skipped_not_html"
        continue
      charset = None
      if "charset=" in ctype.lower():
        charset = ctype.lower().split("charset=", 1)[1].split(";")[0].strip(" \"'") or None
      yield Document(rec.reader.read(), "html", rec.headers.get("WARC-Target-URI"), charset)


def _jsonl_documents(path: str, config: CorpusConfig, strict: bool, stats: records.ReadStats) -> Iterator[Document | str]:
  for lineno, r in records.iter_jsonl(path, strict=strict, stats=stats):
    url = r.get("url") or r.get("id")
    if isinstance(r.get(config.html_field), str):
      yield Document(r[config.html_field], "html", url)
    elif isinstance(r.get(config.text_field), str):
      yield Document(r[config.text_field], "text", url)
    elif strict:
      raise records.RecordError(f"{path}:{lineno}: expected a string field {config.text_field!r} or "
                                f"{config.html_field!r}, found fields {sorted(r)[:10]}")
    else:
      yield "skipped_no_text_field"


def _tfds_documents(unit: WorkUnit, config: CorpusConfig) -> Iterator[Document | str]:
  source = _tfds_source(unit.path, unit.split, config)
  for i in range(unit.start, unit.stop):
    ex = source[i]
    url = ex.get("url")
    url = url.decode("utf-8", "replace") if isinstance(url, bytes) else url
    for field, kind in ((config.html_field, "html"), (config.text_field, "text")):
      value = ex.get(field)
      if value is not None:
        yield Document(value if kind == "html" else value.decode("utf-8", "replace") if isinstance(value, bytes) else value,
                       kind, url or f"{unit.path}:{unit.split}[{i}]")
        break
    else:
      yield "skipped_no_text_field"


def unit_documents(unit: WorkUnit, config: CorpusConfig, strict: bool, stats: records.ReadStats) -> Iterator[Document | str]:
  """Documents of a unit; a plain string instead of a document is a counter name (a skipped record)."""
  if unit.kind == "html":
    with records.open_bytes(unit.path) as f:
      yield Document(f.read(), "html", unit.path)
  elif unit.kind == "warc":
    yield from _warc_documents(unit.path)
  elif unit.kind == "jsonl":
    yield from _jsonl_documents(unit.path, config, strict, stats)
  elif unit.kind == "text":
    with records.open_bytes(unit.path) as f:
      yield Document(f.read().decode("utf-8", errors="replace"), "plain", unit.path)
  elif unit.kind == "tfds":
    yield from _tfds_documents(unit, config)
  else:
    raise CorpusError(f"unit {unit.index}: expected kind html|warc|jsonl|text|tfds, found {unit.kind!r}")


# ---------------------------------------------------------------- filters

def header_problem(header: str, config: CorpusConfig) -> str | None:
  """The counter name of the first header heuristic that fails, or None."""
  letters = [c for c in header if c.isalpha()]
  if not letters:
    return "header_empty"
  if len(header) > config.header_max_chars:
    return "header_too_long"
  if len(letters) >= config.header_caps_min_letters:
    caps = sum(c.isupper() for c in letters) / len(letters)
    if caps > config.header_max_caps:
      return "header_capitals"
  if looks_like_navigation(header, config.nav_max_words):
    return "header_navigation"
  return None


class LanguageId:
  """py3langid with normalized probabilities; its model ships inside the wheel."""

  def __init__(self):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    self._ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

  def classify(self, text: str) -> tuple[str, float]:
    lang, prob = self._ident.classify(text)
    return lang, float(prob)


def normalize_for_dedup(text: str) -> str:
  return _WS_RE.sub(" ", text.lower()).strip()


def exact_key(text: str) -> int:
  return int.from_bytes(hashlib.blake2b(normalize_for_dedup(text).encode("utf-8"), digest_size=8).digest(), "little")


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
  """(bands, rows) minimizing false-positive + false-negative mass around `threshold` (the datasketch
  criterion: P(candidate | Jaccard s) = 1 - (1 - s^r)^b, integrated on either side of the threshold)."""
  best, best_err = (1, num_perm), math.inf
  below = np.linspace(0.0, threshold, 201)
  above = np.linspace(threshold, 1.0, 201)
  for b in range(1, num_perm + 1):
    r = num_perm // b
    fp = np.trapezoid(1 - (1 - below ** r) ** b, below)
    fn = np.trapezoid((1 - above ** r) ** b, above)
    if fp + fn < best_err:
      best, best_err = (b, r), fp + fn
  return best


class Shingler:
  """MinHash signatures of word n-gram sets, and their LSH band keys (computed in the workers)."""

  def __init__(self, config: CorpusConfig):
    from datasketch import MinHash
    self._minhash = MinHash
    self.n = config.shingle_words
    self.num_perm = config.num_perm
    self.bands, self.rows = lsh_params(config.near_dup_threshold, config.num_perm)
    # One set of permutations for all segments: building them per MinHash would dominate the cost.
    # crc32 (C, stable across processes) as the base 32-bit shingle hash: datasketch's default sha1 wrapper
    # was a third of the job's time; the min-wise permutations are datasketch's affine maps on top of it.
    first = MinHash(num_perm=config.num_perm, seed=config.minhash_seed)
    self._perms, self._scheme = first.permutations, first.scheme

  def signature(self, text: str) -> np.ndarray:
    words = _WORD_RE.findall(text.lower())
    n = self.n
    grams = [" ".join(words[i:i + n]).encode("utf-8") for i in range(max(1, len(words) - n + 1))]
    m = self._minhash(num_perm=self.num_perm, permutations=self._perms, scheme=self._scheme, hashfunc=zlib.crc32)
    m.update_batch(grams)
    return m.hashvalues.astype(np.uint32)  # the affine32 scheme's values are < 2**32

  def band_keys(self, signature: np.ndarray) -> tuple[int, ...]:
    rows = signature[: self.bands * self.rows].reshape(self.bands, self.rows)
    return tuple(int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, salt=b.to_bytes(2, "little")).digest(), "little")
                 for b, row in enumerate(rows))


class DedupIndex:
  """Exact and near-duplicate memory of the kept segments: the only state that grows with the corpus.

  Per kept segment: one 64-bit exact key and `bands` 64-bit band keys, each a Python int in a set.
  A segment is a near duplicate when any band matches a kept segment (LSH candidates; no verification,
  so the false-positive rate is the banding's, under 1% below Jaccard 0.5 with the default 128 perms).
  """

  def __init__(self, bands: int):
    self.exact: set[int] = set()
    self.bands: list[set[int]] = [set() for _ in range(bands)]

  def check_and_add(self, exact: int, band_keys: Sequence[int]) -> str | None:
    if exact in self.exact:
      return "exact_duplicate"
    if any(k in band for k, band in zip(band_keys, self.bands)):
      return "near_duplicate"
    self.exact.add(exact)
    for k, band in zip(band_keys, self.bands):
      band.add(k)
    return None

  def __len__(self) -> int:
    return len(self.exact)


# ---------------------------------------------------------------- the per-unit transform

@dataclasses.dataclass
class Candidate:
  """A segment that passed every per-segment filter; dedup happens in the parent."""
  record: dict
  exact: int
  band_keys: tuple[int, ...]


_WORKER: dict[str, Any] = {}


def _worker_state(config: CorpusConfig) -> dict:
  if _WORKER.get("config") != config:
    _WORKER.update(config=config, langid=LanguageId(), shingler=Shingler(config))
  return _WORKER


def section_problem(section: Section, config: CorpusConfig, langid: LanguageId) -> str | None:
  if section.header is not None:
    problem = header_problem(section.header, config)
    if problem:
      return problem
  n = len(section.text)
  if n < config.min_chars:
    return "too_short"
  if n > config.max_chars:
    return "too_long"
  lang, prob = langid.classify(section.text[: config.lang_chars])
  if lang != config.lang or prob < config.lang_min_prob:
    return "not_english"
  return None


def process_unit(unit: WorkUnit, config: CorpusConfig, strict: bool = True) -> tuple[list[Candidate], dict]:
  """All per-segment work for one unit: read, segment, filter, sign. Pure given its inputs."""
  cpu_start = time.process_time()
  state = _worker_state(config)
  langid, shingler = state["langid"], state["shingler"]
  counts: collections.Counter = collections.Counter()
  read_stats = records.ReadStats()
  out: list[Candidate] = []
  for doc in unit_documents(unit, config, strict, read_stats):
    if isinstance(doc, str):
      counts[doc] += 1
      continue
    counts["documents"] += 1
    try:
      if doc.kind == "html":
        content = decode_html(doc.content, doc.charset) if isinstance(doc.content, bytes) else doc.content
        sections = html_sections(content, config)
      elif doc.kind == "plain":
        sections = text_sections(doc.content, config)
      else:
        sections = [Section(None, 0, doc.content.strip())]
    except Exception as e:  # a page the parser cannot read is one lost page, never a lost job
      if strict:
        raise CorpusError(f"{unit.path} ({doc.url}): could not segment document: {e!r} (--lenient skips and counts "
                          "such pages)") from e
      counts["documents_failed"] += 1
      continue
    if not sections:
      counts["documents_without_sections"] += 1
    for section in sections:
      counts["sections"] += 1
      counts["paragraphs_navigation"] += section.paragraphs_dropped
      problem = section_problem(section, config, langid)
      if problem:
        counts[problem] += 1
        continue
      sig = shingler.signature(section.text)
      provenance = {"url": doc.url} if doc.url else {}
      if section.header is not None:
        provenance["header"] = section.header
      record = records.make_segment(section.text, unit.path if unit.kind != "tfds" else f"tfds:{unit.path}:{unit.split}",
                                    **provenance)
      out.append(Candidate(record, exact_key(section.text), shingler.band_keys(sig)))
  for reason, n in read_stats.reasons.items():
    counts[f"records_skipped_{reason}"] += n
  counts["units"] += 1
  counts["worker_cpu_ms"] += round(1000 * (time.process_time() - cpu_start))
  return out, dict(counts)


def _process_unit_job(args) -> tuple[list[Candidate], dict]:
  unit, config, strict = args
  return process_unit(unit, config, strict)


# ---------------------------------------------------------------- the job

FILTER_ORDER = ("documents", "sections", "header_empty", "header_too_long", "header_capitals", "header_navigation",
                "too_short", "too_long", "not_english", "exact_duplicate", "near_duplicate", "kept")


@dataclasses.dataclass
class CorpusStats:
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  seconds: float = 0.0
  workers: int = 1
  dedup_index_entries: int = 0

  def to_dict(self) -> dict:
    ordered = {k: self.counts.get(k, 0) for k in FILTER_ORDER}
    ordered.update({k: v for k, v in sorted(self.counts.items()) if k not in ordered})
    return {"counts": ordered, "seconds": round(self.seconds, 3), "workers": self.workers,
            "segments_per_second": round(self.counts.get("sections", 0) / self.seconds, 1) if self.seconds else None,
            "kept_per_second": round(self.counts.get("kept", 0) / self.seconds, 1) if self.seconds else None}

  def table(self) -> str:
    d = self.to_dict()["counts"]
    width = max(len(k) for k in d)
    return "\n".join(f"{k:<{width}}  {v:>10,}" for k, v in d.items())


UnitResult = tuple[list[Candidate], dict]  # a unit's candidates in order, and its counts


def iter_segments(inputs: Sequence[str], config: CorpusConfig = CorpusConfig(), strict: bool = True,
                  workers: int | None = None, stats: CorpusStats | None = None, runner: str = "local",
                  beam_args: Sequence[str] = (), scratch: epath.PathLike | None = None) -> Iterator[dict]:
  """Streams kept segments in input order.

  runner 'local': workers None = every core, 1 = in this process. They are started with `spawn` (never
  fork: the parent may hold JAX's threads) and given units in order through imap, so at most a few units'
  candidates wait in memory. runner 'beam': the units run on Apache Beam (`beam_args` are Beam's pipeline
  options; hb_jax/data/corpus_beam.py), writing their results under `scratch` (a folder every Beam worker
  can write; default a local temporary one), which are read back here in unit order. Either way the dedup
  pass below sees the same candidates in the same order, so the output is the same.
  """
  if runner not in RUNNERS:
    raise CorpusError(f"expected runner in {RUNNERS}, found {runner!r}")
  stats = stats if stats is not None else CorpusStats()
  start = time.perf_counter()
  units = plan_units(inputs, config, skipped=stats.counts)
  if runner == "beam":
    from hb_jax.data import corpus_beam
    stats.workers = 0  # Beam's to decide
    yield from _dedup(corpus_beam.unit_results(units, config, strict, beam_args, scratch), config, stats, start)
    return
  workers = min(workers or os.cpu_count() or 1, max(1, len(units)))
  stats.workers = workers
  jobs = ((u, config, strict) for u in units)
  pool = None
  if workers > 1:
    pool = multiprocessing.get_context("spawn").Pool(workers)
    results = pool.imap(_process_unit_job, jobs, chunksize=1)
  else:
    results = map(_process_unit_job, jobs)
  try:
    yield from _dedup(results, config, stats, start)
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()


def _dedup(results: Iterable[UnitResult], config: CorpusConfig, stats: CorpusStats, start: float) -> Iterator[dict]:
  """Kept segments: candidates in input order through one DedupIndex (the first occurrence wins)."""
  index = DedupIndex(Shingler(config).bands)
  try:
    for candidates, counts in results:
      stats.counts.update(counts)
      for c in candidates:
        problem = index.check_and_add(c.exact, c.band_keys)
        if problem:
          stats.counts[problem] += 1
        else:
          stats.counts["kept"] += 1
          yield c.record
  finally:
    stats.seconds = time.perf_counter() - start
    stats.dedup_index_entries = len(index)


def stats_path(output: epath.PathLike) -> epath.Path:
  output = epath.Path(output)
  return output.parent / (output.name + ".stats.json")


def prepare_corpus(inputs: Sequence[str], output: epath.PathLike, config: CorpusConfig = CorpusConfig(),
                   strict: bool = True, workers: int | None = None, runner: str = "local",
                   beam_args: Sequence[str] = ()) -> CorpusStats:
  """Writes segments.jsonl atomically (nothing half-written on failure) and its stats JSON beside it.

  runner 'beam' runs the per-unit work on Apache Beam (`beam_args`: its pipeline options, DirectRunner by
  default); its scratch files go beside `output`, which distributed workers must reach (e.g. gs://)."""
  stats = CorpusStats()
  output = epath.Path(output)
  with records.AtomicJsonlWriter(output) as w:
    for seg in iter_segments(inputs, config, strict, workers, stats, runner, beam_args,
                             scratch=output.parent / f".{output.name}.beam"):
      w.write(seg)
    if not stats.counts["kept"]:  # raised inside the writer: no empty segments.jsonl is committed
      counts = {k: v for k, v in stats.to_dict()["counts"].items() if v}
      raise CorpusError(f"{', '.join(list(inputs)[:3])}: expected at least one segment, found none after the "
                        f"filters (counts: {counts}); see --min-chars, --max-chars, --lang")
  summary = stats.to_dict()
  summary["config"] = dataclasses.asdict(config)
  summary["inputs"] = list(inputs)
  summary["runner"] = runner
  records.write_json(stats_path(output), summary)
  return stats

