"""Corpus: HTML segmentation, each reader, each filter, dedup, determinism across workers, CLI and TFDS."""
import gzip
import codecs
import json
import pathlib
import subprocess
import sys

import pytest

from hb_jax.data import corpus, records, synthetic_web

ROOT = pathlib.Path(__file__).resolve().parents[2]
CFG = corpus.CorpusConfig()


def _english(n_chars: int, seed: int = 0) -> str:
  import random
  return synthetic_web.paragraph(random.Random(seed), n_chars)


def test_html_charset_sniffing():
  text = "caf\u00e9 " * 3
  assert corpus.decode_html(text.encode("utf-8")) == text
  assert corpus.decode_html(b'<meta charset="latin-1">' + text.encode("latin-1")).endswith(text)
  # A meta tag naming UTF-16 on a page readable as ASCII means UTF-8 (HTML5); a BOM wins over any label.
  assert corpus.decode_html(b'<meta charset="utf-16">' + text.encode("utf-8")).endswith(text)
  assert corpus.decode_html(codecs.BOM_UTF16_LE + text.encode("utf-16-le"), charset="latin-1") == text


def test_html_sections_drop_boilerplate():
  html = f"""<html><head><script>var a = "<h1>no</h1>";</script></head><body>
  <div class="site-navbar"><h2>Navigation</h2><a>Home</a></div><nav><h3>Menu</h3></nav>
  <p>Before any header: not a segment.</p>
  <h1>How to bake <b>bread</b></h1>
  <div class="content"><p>Mix the fl<em>our</em> and water.</p><p>Share</p><ul><li>Preheat.</li><li>Bake.</li></ul></div>
  <div class="ad-slot">Buy now!</div><aside><p>Sidebar text</p></aside><div role="navigation">Next page</div>
  <h2>Serving</h2>Cut it<br>warm.<footer>Copyright</footer></body></html>"""
  got = corpus.html_sections(html)
  assert [(s.header, s.level) for s in got] == [("How to bake bread", 1), ("Serving", 2)]
  assert got[0].text == "Mix the flour and water.\nPreheat.\nBake." and got[0].paragraphs_dropped == 1
  assert got[1].text == "Cut it\nwarm."
  assert corpus.html_sections("<html><body><p>no headers</p></body></html>") == []
  assert corpus.html_sections(b"<h1>Caf\xe9</h1><p>x</p>".replace(b"<h1>", b'<meta charset="latin-1"><h1>'))[0].header == "Café"


def test_html_sections_drop_permalink_anchors():
  # Sphinx: a headerlink after the header and after an API signature (a <dt>, no header); MkDocs' and
  # Hugo's symbol-only in-page links; a footnote reference keeps its digit, an ordinary in-page link its text.
  html = """<body><h1>ast — Abstract Syntax Trees<a class="headerlink" href="#module-ast" title="Link to this heading">¶</a></h1>
  <dl><dt class="sig sig-object py" id="ast.Name"><em>class</em> ast.Name(<em>id</em>, <em>ctx</em>)<a class="headerlink"
  href="#ast.Name" title="Link to this definition">¶</a></dt><dd><p>A variable name.<a href="#fn1">1</a></p></dd></dl>
  <h2>Node classes<a href="#node-classes">#</a></h2><p>See <a href="#ast.Name">Name</a> above. <a href="#top">↑</a></p></body>"""
  got = corpus.html_sections(html)
  assert [s.header for s in got] == ["ast — Abstract Syntax Trees", "Node classes"]
  assert got[0].text == "class ast.Name(id, ctx)\nA variable name.1"
  assert got[1].text == "See Name above."


@pytest.mark.parametrize("header, problem", [
  ("How to grow tomatoes", None), ("FAQ", None), ("The USA in 1990", None),
  ("SHOP OUR DEALS NOW", "header_capitals"), ("Share this", "header_navigation"),
  ("Leave a Reply", "header_navigation"), ("Login", "header_navigation"), ("Advertisement", "header_navigation"),
  ("123 456", "header_empty"), ("x" * 201, "header_too_long"),
  ("How to share files between two computers on a network", None),   # long headers are judged on content
])
def test_header_heuristics(header, problem):
  assert corpus.header_problem(header, CFG) == problem


def test_language_and_length_filters():
  langid = corpus.LanguageId()
  en = corpus.Section("A header", 1, _english(800))
  assert corpus.section_problem(en, CFG, langid) is None
  de = corpus.Section("Ein Titel", 1, synthetic_web.paragraph(__import__("random").Random(1), 800, synthetic_web.DE_WORDS))
  assert corpus.section_problem(de, CFG, langid) == "not_english"
  assert corpus.section_problem(corpus.Section("A header", 1, _english(300)), CFG, langid) == "too_short"
  assert corpus.section_problem(corpus.Section("A header", 1, _english(3500)), CFG, langid) == "too_long"


def test_dedup_index_exact_and_near():
  sh = corpus.Shingler(CFG)
  assert (sh.bands, sh.rows) == corpus.lsh_params(0.8, 128) and sh.bands * sh.rows <= 128
  a = _english(1500, seed=3)
  near = a.replace(".", " indeed.", 1)
  other = _english(1500, seed=4)
  index = corpus.DedupIndex(sh.bands)

  def add(text):
    return index.check_and_add(corpus.exact_key(text), sh.band_keys(sh.signature(text)))

  assert add(a) is None
  assert add("  " + a.upper() + " ") == "exact_duplicate"   # case and whitespace do not make it new
  assert add(near) == "near_duplicate"
  assert add(other) is None and len(index) == 2


def test_synthetic_corpus_counts_and_worker_determinism(tmp_path):
  made = synthetic_web.write_corpus(tmp_path / "web", n_html=8, n_warc_files=2, pages_per_warc=8, seed=1)
  stats1 = corpus.CorpusStats()
  one = list(corpus.iter_segments([str(tmp_path / "web")], workers=1, stats=stats1))
  c = stats1.counts
  assert (c["kept"], c["header_capitals"], c["header_navigation"], c["too_short"], c["too_long"], c["not_english"]) == (
    made.good, made.caps_header, made.nav_header, made.short, made.long, made.german)
  assert c["exact_duplicate"] + c["near_duplicate"] == made.exact_copy + made.near_copy
  assert c["documents"] == 24 and len(one) == made.good
  assert len({s["id"] for s in one}) == len(one)
  assert all(CFG.min_chars <= len(s["text"]) <= CFG.max_chars and s["header"] for s in one)
  assert any(s["source"].endswith(".warc.gz") and s["url"].startswith("http://") for s in one)
  stats2 = corpus.CorpusStats()
  two = list(corpus.iter_segments([str(tmp_path / "web")], workers=2, stats=stats2))
  assert two == one and stats2.workers == 2


def test_warc_versions_and_non_html_records(tmp_path):
  page = f"<h1>Growing tomatoes</h1><p>{_english(900, 5)}</p>"
  data = synthetic_web.warc_record("http://a/1", page, version="0.18")
  http = b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n\r\n%PDF-1."
  pdf = (b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://a/x.pdf\r\n"
         b"Content-Type: application/http; msgtype=response\r\n"
         b"Content-Length: %d\r\n\r\n%s\r\n\r\n" % (len(http), http))
  (tmp_path / "a.warc").write_bytes(data + pdf)
  (tmp_path / "b.warc.gz").write_bytes(gzip.compress(synthetic_web.warc_record("http://b/1", page.replace("tomatoes", "beans"))))
  stats = corpus.CorpusStats()
  segs = list(corpus.iter_segments([str(tmp_path / "*.warc*")], workers=1, stats=stats))
  assert [s["url"] for s in segs] == ["http://a/1"]            # b is an exact duplicate of a's text
  assert stats.counts["skipped_not_html"] == 1 and stats.counts["exact_duplicate"] == 1


def test_jsonl_text_and_plain_text(tmp_path):
  jl = tmp_path / "docs.jsonl"
  rows = [{"text": _english(800, 7), "url": "u1"}, {"html": f"<h2>A title here</h2><p>{_english(800, 8)}</p>"},
          {"text": "too short"}]
  jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
  txt = tmp_path / "book.txt"
  txt.write_text("\n\n".join(_english(1000, s) for s in range(10, 14)))
  stats = corpus.CorpusStats()
  segs = list(corpus.iter_segments([str(jl), str(txt)], workers=1, stats=stats))
  assert segs[0]["url"] == "u1" and "header" not in segs[0]
  assert segs[1]["header"] == "A title here"
  assert stats.counts["too_short"] == 1
  book = [s for s in segs if s["source"].endswith("book.txt")]
  assert len(book) == 2 and all(len(s["text"]) <= CFG.max_chars for s in book)   # 4 paragraphs packed into 2


def test_bad_jsonl_strict_and_lenient(tmp_path):
  jl = tmp_path / "docs.jsonl"
  jl.write_text(json.dumps({"text": _english(800, 9)}) + "\n{oops\n" + json.dumps({"body": "x"}) + "\n")
  with pytest.raises(records.RecordError, match=f"{jl}:2:"):
    list(corpus.iter_segments([str(jl)], workers=1))
  stats = corpus.CorpusStats()
  assert len(list(corpus.iter_segments([str(jl)], strict=False, workers=1, stats=stats))) == 1
  assert stats.counts["records_skipped_invalid_json"] == 1 and stats.counts["skipped_no_text_field"] == 1
  with pytest.raises(FileNotFoundError, match="nothing at"):
    corpus.plan_units([str(tmp_path / "missing.html")])
  (tmp_path / "x.pdf").write_bytes(b"%PDF")
  with pytest.raises(ValueError, match="expected a file ending"):
    corpus.plan_units([str(tmp_path / "x.pdf")])
  # A record without text names its line; lz4 is read for WARC only (other readers would parse the
  # compressed bytes as a page); a corpus that keeps nothing is an error and writes no segments file.
  no_text = tmp_path / "no_text.jsonl"
  no_text.write_text(json.dumps({"text": _english(800, 9)}) + "\n" + json.dumps({"body": "x"}) + "\n")
  with pytest.raises(records.RecordError, match=rf"{no_text}:2: expected a string field 'text'"):
    list(corpus.iter_segments([str(no_text)], workers=1))
  (tmp_path / "p.html.lz4").write_bytes(b"\x04\x22\x4d\x18")
  with pytest.raises(ValueError, match=r"WARC also .lz4"):
    corpus.plan_units([str(tmp_path / "p.html.lz4")])
  assert corpus.file_kind("a.warc.lz4") == "warc" and corpus.file_kind("a.jsonl.lz4") is None
  short = tmp_path / "short.jsonl"
  short.write_text(json.dumps({"text": "too short"}) + "\n")
  out = tmp_path / "segments.jsonl"
  with pytest.raises(ValueError, match=r"expected at least one segment, found none after the filters"):
    corpus.prepare_corpus([str(short)], out, workers=1)
  assert not out.exists()


def test_cli_writes_segments_and_stats_and_nothing_on_failure(tmp_path):
  synthetic_web.write_corpus(tmp_path / "web", n_html=4, n_warc_files=0, pages_per_warc=0, seed=2)
  out = tmp_path / "data" / "segments.jsonl"
  cmd = [sys.executable, str(ROOT / "tools" / "prepare_corpus.py"), "--input", str(tmp_path / "web"),
         "--output", str(out), "--workers", "1"]
  run = subprocess.run(cmd, capture_output=True, text=True, check=True)
  assert "near_duplicate" in run.stdout
  stats = json.loads((tmp_path / "data" / "segments.jsonl.stats.json").read_text())
  assert stats["counts"]["kept"] == len(list(records.read_segments(out))) > 0
  assert stats["config"]["min_chars"] == 600
  (tmp_path / "web" / "bad.jsonl").write_text("{oops\n")
  out2 = tmp_path / "data" / "segments2.jsonl"
  failed = subprocess.run(cmd[:-4] + ["--output", str(out2), "--workers", "1"], capture_output=True, text=True)
  assert failed.returncode != 0 and "bad.jsonl:1:" in failed.stderr
  assert not out2.exists() and not [p for p in out2.parent.iterdir() if p.name.endswith(".tmp")]


def _tiny_tfds(data_dir, texts):
  tfds = pytest.importorskip("tensorflow_datasets")

  class TinyWebPages(tfds.core.GeneratorBasedBuilder):
    # A one-part module name: TFDS would otherwise look for checksum resources inside the `data` test package.
    __module__ = "tiny_web_pages"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "url": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, t in enumerate(texts):
        yield i, {"text": t, "url": f"http://tfds/{i}"}

  builder = TinyWebPages(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder


def test_tfds_data_source(tmp_path):
  texts = [_english(800, 20 + i) for i in range(5)] + ["short"]
  builder = _tiny_tfds(tmp_path / "tfds", texts)
  assert corpus.parse_tfds_spec("tfds:tiny_web_pages/default:train") == ("tiny_web_pages/default", "train")
  assert corpus.parse_tfds_spec("tfds:tiny_web_pages") == ("tiny_web_pages", "train")
  cfg = corpus.CorpusConfig(tfds_chunk=4, tfds_data_dir=str(tmp_path / "tfds"))
  stats = corpus.CorpusStats()
  by_name = list(corpus.iter_segments(["tfds:tiny_web_pages:train"], cfg, workers=1, stats=stats))
  assert sorted(s["text"] for s in by_name) == sorted(texts[:5])
  assert stats.counts["units"] == 2 and stats.counts["too_short"] == 1
  by_dir = list(corpus.iter_segments([f"tfds:{builder.data_dir}:train"], cfg, workers=1))
  assert [s["id"] for s in by_dir] == [s["id"] for s in by_name]


def test_beam_runner_writes_the_local_runners_segments_file(tmp_path, monkeypatch):
  pytest.importorskip("apache_beam", reason="apache-beam is not installed (the `beam` extra)")
  from hb_jax import cli
  from hb_jax.data import corpus_beam
  assert corpus_beam.plan_batches(7, 3) == [(0, 3), (3, 6), (6, 7)] and corpus_beam.plan_batches(0) == []
  monkeypatch.setattr(corpus_beam, "BATCHES", 3)  # several units per batch, and a short last batch
  made = synthetic_web.write_corpus(tmp_path / "web", n_html=6, n_warc_files=1, pages_per_warc=6, seed=3)
  web, local, beam = str(tmp_path / "web"), tmp_path / "local.jsonl", tmp_path / "beam.jsonl"
  assert cli.prepare_corpus_main(["--input", web, "--output", str(local), "--workers", "1"]) == 0
  assert cli.prepare_corpus_main(["--input", web, "--output", str(beam), "--runner=beam", "--",
                                  "--runner=DirectRunner"]) == 0
  assert beam.read_bytes() == local.read_bytes() and len(local.read_text().splitlines()) == made.good
  counts = [json.loads((tmp_path / f"{n}.jsonl.stats.json").read_text())["counts"] for n in ("local", "beam")]
  assert [{k: v for k, v in c.items() if k != "worker_cpu_ms"} for c in counts] == [
    {k: v for k, v in counts[0].items() if k != "worker_cpu_ms"}] * 2
  assert counts[0]["exact_duplicate"] + counts[0]["near_duplicate"] > 0   # the dedup pass had work to do
  assert sorted(p.name for p in tmp_path.iterdir()) == ["beam.jsonl", "beam.jsonl.stats.json", "local.jsonl",
                                                        "local.jsonl.stats.json", "web"]  # no scratch left


def test_folder_walk_skips_and_counts_files_that_are_no_corpus(tmp_path):
  site = tmp_path / "site"  # a mirrored documentation site: pages, and its _static/ files
  made = synthetic_web.write_corpus(site, n_html=3, n_warc_files=0, pages_per_warc=0, seed=4)
  (site / "_static").mkdir()
  options = site / "_static" / "documentation_options.json"
  options.write_text('{\n  "VERSION": "3.12",\n  "LANGUAGE": "en"\n}\n')
  (site / "_static" / "searchindex.json").write_text(json.dumps({"docnames": ["a"], "terms": {"x": 0}}) + "\n")
  (site / "_static" / "theme.js").write_text("var x = 1;\n")
  (site / "more.json").write_text(json.dumps({"text": _english(800, 30), "url": "u"}) + "\n")  # records: read
  stats = corpus.CorpusStats()
  segs = list(corpus.iter_segments([str(site)], workers=1, stats=stats))
  assert stats.counts["files_skipped_json"] == 2 and stats.counts["files_skipped_unknown_type"] == 1
  assert len(segs) == made.good + 1 and [s["url"] for s in segs].count("u") == 1
  # Named on the command line, the same file is read as JSONL, and its first bad line is the error.
  with pytest.raises(records.RecordError, match=rf"{options}:1: expected JSON, found Expecting property name "
                                                r"enclosed in double quotes at column 2 \(the end of the line\)"):
    list(corpus.iter_segments([str(options)], workers=1))
