"""A synthetic web corpus (HTML pages and WARC files) with known content, for tests and the corpus bench.

Every page has boilerplate (nav, ads, share buttons, script, cookie banner), text before its first header,
and sections of each kind the filters must tell apart: good English sections, too short, too long,
ALL-CAPS and navigation headers, German text, exact and near copies of earlier sections.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import random
import uuid

EN_WORDS = ("the of and to in is that for it as with was on be by this are from at or an which have not had but "
            "they one all were we when there can more if will about each their time would so these other into has "
            "how some her two like him see could people than first water been call who its now find long down day "
            "did get come made may part garden soil plant seeds grow summer light bread flour oven recipe history "
            "river city ancient market music guitar simple method answer question learn study build system data "
            "model measure careful important example result process useful small large early late often").split()
DE_WORDS = ("der die das und ist nicht ein eine mit auf für von dem den zu sich auch noch wird sind wir ich sie "
            "aber wenn oder nach bei über unter zwischen heute morgen immer wieder schon sehr gut Wasser Garten "
            "Brot Stadt Fluss Geschichte Musik Frage Antwort lernen bauen kleine große Beispiel wichtig").split()


def sentence(rng: random.Random, words=EN_WORDS) -> str:
  n = rng.randint(8, 18)
  s = " ".join(rng.choice(words) for _ in range(n))
  return s[0].upper() + s[1:] + "."


def paragraph(rng: random.Random, chars: int, words=EN_WORDS) -> str:
  out = []
  while sum(len(s) + 1 for s in out) < chars:
    out.append(sentence(rng, words))
  return " ".join(out)


@dataclasses.dataclass
class PageStats:
  """What the generator put in (for tests to compare against the filter counts)."""
  good: int = 0
  short: int = 0
  long: int = 0
  caps_header: int = 0
  nav_header: int = 0
  german: int = 0
  exact_copy: int = 0
  near_copy: int = 0


BOILERPLATE = """<div class="navbar"><a href="/">Home</a> <a href="/login">Login</a> <a>Sign up</a></div>
<nav><ul><li>Menu</li><li>Products</li></ul></nav>
<div id="cookie-banner">We use cookies to improve your experience. Accept all cookies.</div>
<script>window.dataLayer = []; function track() {{ return 1; }}</script><style>.x{{color:red}}</style>
<p>Welcome to {site}, text before the first header that is no segment.</p>"""


def html_page(rng: random.Random, site: str, stats: PageStats, history: list[str]) -> str:
  """One page with 3-6 sections of mixed kinds; `history` holds earlier good sections for copies."""
  parts = [f"<html><head><title>{site}</title></head><body>", BOILERPLATE.format(site=site)]
  for _ in range(rng.randint(3, 6)):
    kind = rng.choices(["good", "short", "long", "caps", "nav", "german", "copy", "near"],
                       weights=[10, 2, 1, 1, 1, 1, 1, 1])[0]
    header = sentence(rng)[:-1][: rng.randint(20, 60)].strip()
    level = rng.randint(1, 4)
    if kind in ("copy", "near") and history:
      body = rng.choice(history)
      if kind == "near":  # change one sentence-ending word: Jaccard of 5-grams stays high
        body = body.replace(".", " indeed.", 1)
        stats.near_copy += 1
      else:
        stats.exact_copy += 1
      paras = [body]
    elif kind == "short":
      paras = [paragraph(rng, 200)]
      stats.short += 1
    elif kind == "long":
      paras = [paragraph(rng, 700) for _ in range(6)]
      stats.long += 1
    elif kind == "german":
      paras = [paragraph(rng, 500, DE_WORDS), paragraph(rng, 500, DE_WORDS)]
      stats.german += 1
    else:
      paras = [paragraph(rng, rng.randint(300, 600)) for _ in range(rng.randint(2, 3))]
      if kind == "caps":
        header = header.upper()
        stats.caps_header += 1
      elif kind == "nav":
        header = rng.choice(["Share this", "Related Posts", "Leave a Reply", "Main Menu", "Follow us"])
        stats.nav_header += 1
      else:
        stats.good += 1
        history.append(" ".join(paras))
    parts.append(f"<h{level}>{header}</h{level}>")
    # Inline markup mid-word: extraction must not split the word it cuts.
    parts.append('<div class="content">' + "".join(
      f"<p>{p[:len(p) // 3]}<em>{p[len(p) // 3:len(p) // 2]}</em>{p[len(p) // 2:]}</p>" for p in paras))
    parts.append('<div class="share-buttons"><a>Share</a> <a>Tweet</a></div>'
                 '<div class="ad-slot">Advertisement: buy now</div></div><p>Share</p>')
  parts.append("<footer><p>Copyright 2009 Contact us Privacy</p></footer></body></html>")
  return "\n".join(parts)


def warc_record(url: str, html: str, version: str = "1.0") -> bytes:
  """One WARC response record (HTTP headers + HTML body)."""
  body = html.encode("utf-8")
  http = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
          + f"Content-Length: {len(body)}\r\n\r\n".encode()) + body
  head = (f"WARC/{version}\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\n"
          f"WARC-Date: 2009-02-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>\r\n"
          f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
  return head + http + b"\r\n\r\n"


def warc_file(pages: list[tuple[str, str]], version: str = "1.0", gz: bool = True) -> bytes:
  """A WARC file (a warcinfo-free sequence of responses; one gzip member per record when gz)."""
  buf = io.BytesIO()
  for url, html in pages:
    rec = warc_record(url, html, version)
    buf.write(gzip.compress(rec, compresslevel=1) if gz else rec)
  return buf.getvalue()


def write_corpus(directory, n_html: int, n_warc_files: int, pages_per_warc: int, seed: int = 0) -> PageStats:
  """Writes `n_html` .html files and `n_warc_files` .warc.gz files under `directory`; returns what is in them."""
  import pathlib
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = random.Random(seed)
  stats = PageStats()
  history: list[str] = []
  for i in range(n_html):
    (directory / f"page{i:05d}.html").write_text(html_page(rng, f"site{i}", stats, history), encoding="utf-8")
  for w in range(n_warc_files):
    pages = [(f"http://example{w}.com/{j}", html_page(rng, f"example{w}", stats, history)) for j in range(pages_per_warc)]
    (directory / f"crawl{w:03d}.warc.gz").write_bytes(warc_file(pages, version="0.18" if w % 2 else "1.0"))
  return stats
