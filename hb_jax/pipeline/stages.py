"""The stages of the method (shared HUMPBACK.md), each a function of the run context that writes its outputs
atomically and returns {relative path: content hash} for the manifest.

  prepare      inputs -> data/seed.jsonl, data/segments.jsonl (+ the demo world's base model and hidden truth)
  backward     M_yx: base finetuned on reversed seed pairs                  -> models/backward
  augment      x̂ for every segment with M_yx                               -> augment/candidates.jsonl
  seed         M0: base finetuned on the seed                               -> models/m0
  curate_t     M_{t-1} rates every candidate                                -> curate/iter{t}/scores*.jsonl, A4, A5
  train_t      M_t: base finetuned on seed + A_k^(t)                         -> models/m{t}
  no_curation  baseline: base finetuned on seed + every candidate            -> models/no_curation
  evaluate     held-out generations (and accuracy where a checker exists)   -> evaluate/
  report       report/report.md, report/summary.json, plots, exports
  finetune     one model alone (launch with --stage=finetune)

Bulk inference (augment, curate, evaluate) runs on every process, each on its share of the records with a
model replica on its own devices (a hb_jax.jobs.BulkJob); process 0 merges. Training runs on every process
over the global mesh (hb_jax.train.finetune). Only process 0 writes merged files and the manifest.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterator

import jax
from etils import epath

from hb_jax import model_folder
from hb_jax.config import TrainConfig
from hb_jax import jobs
from hb_jax.data import prompts, records
from hb_jax.pipeline import curation
from hb_jax.pipeline.config import PipelineConfig, engine
from hb_jax.pipeline.manifest import Manifest, file_hash

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Context:
  cfg: PipelineConfig
  workdir: epath.Path
  manifest: Manifest
  share: jobs.Share = jobs.Share()

  def path(self, rel: str) -> epath.Path:
    return self.workdir / rel

  @property
  def is_writer(self) -> bool:
    return self.share.index == 0

  def barrier(self, name: str) -> None:
    if self.share.count > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(name)

  @property
  def style(self) -> prompts.PromptStyle:
    if self.cfg.curate.header == "compact":
      from hb_jax.data.synthetic import DEMO_STYLE
      return DEMO_STYLE
    return prompts.DEFAULT_STYLE

  @property
  def train_tag_mode(self) -> str:
    return "source" if self.cfg.ablation.tags else "none"

  def model_dir(self, name: str) -> epath.Path:
    """models/<name>, with the aliases of the config: an external base model, and the joint model serving
    as both M_yx and M0."""
    if name == "base" and self.cfg.inputs.kind == "files":
      return epath.Path(self.cfg.inputs.base_model)
    if name == "m0" and self.cfg.ablation.joint:
      name = "backward"
    return self.path(f"models/{name}")

  def inference_mesh(self):
    from hb_jax.parallel import make_mesh
    return make_mesh(self.cfg.mesh, jax.local_devices())

  def load(self, name: str):
    return self.load_folder(self.model_dir(name))

  def load_folder(self, path):
    """A model folder on the inference mesh, with the config's `mesh.rules` overrides of the serving layout."""
    from hb_jax import api
    from hb_jax.parallel import SERVE_RULES, with_overrides
    return api.load(path, mesh=self.inference_mesh(), rules=with_overrides(SERVE_RULES, self.cfg.mesh),
                    attention=self.cfg.model.attention)


def model_hash(path: epath.Path) -> str:
  """A cheap fingerprint of a model folder: model.json plus the names and sizes of the params files (hashing
  a 130 GB checkpoint byte by byte would dominate a stage)."""
  from hb_jax.pipeline.manifest import stable_hash
  listing = sorted((str(p.relative_to(path)), p.stat().length) for p in _walk(path / "params"))
  return stable_hash([(path / "model.json").read_text(), listing])


def _walk(d: epath.Path):
  # epath's rglob refuses `**` on object stores; one listing per directory is what we want anyway.
  for p in d.iterdir():
    if p.is_dir():
      yield from _walk(p)
    else:
      yield p


# ------------------------------------------------------------------------------------------------- prepare
def prepare(ctx: Context) -> dict[str, str]:
  if ctx.cfg.inputs.kind == "synthetic":
    return _prepare_synthetic(ctx)
  return _prepare_files(ctx)


def _unique_ids(path, required) -> Iterator[dict]:
  """Records of a user's JSONL; a repeated id is refused here, naming both lines, rather than after the
  backward model has trained (the bulk stages merge their outputs by id)."""
  return jobs.unique_ids((f"{path}:{lineno}", r) for lineno, r in records.iter_jsonl(path, required))


def _prepare_files(ctx: Context) -> dict[str, str]:
  inp = ctx.cfg.inputs
  if ctx.is_writer:
    seed = [_as_seed(r) for r in _unique_ids(inp.seed_jsonl, records.PAIR_REQUIRED)]
    segs = _unique_ids(inp.segments_jsonl, records.SEGMENT_REQUIRED)
    kept = []
    for s in segs:
      kept.append({"id": s["id"], "text": s["text"], "source": s["source"],
                   **{k: s[k] for k in ("header", "url") if k in s}})
      if inp.max_segments and len(kept) >= inp.max_segments:
        break
    records.write_jsonl(ctx.path("data/seed.jsonl"), seed)
    records.write_jsonl(ctx.path("data/segments.jsonl"), kept)
    if inp.heldout_jsonl:
      held = [{"id": r.get("id") or records.content_id("heldout", r["instruction"]), "instruction": r["instruction"]}
              for r in records.read_jsonl(inp.heldout_jsonl, ("instruction",))]
      held = records.unique_by_id(held)
      records.write_jsonl(ctx.path("data/heldout.jsonl"), held)
  ctx.barrier("prepare")
  if not model_folder.is_model_folder(inp.base_model):
    raise FileNotFoundError(f"inputs.base_model: expected a model folder (model.json + params/), found none at "
                            f"{inp.base_model}; convert one with tools/convert_llama.py")
  outs = {p: file_hash(ctx.path(p)) for p in ("data/seed.jsonl", "data/segments.jsonl")}
  outs["models/base"] = model_hash(epath.Path(inp.base_model))
  return outs


def _as_seed(r: dict) -> dict:
  return records.make_pair(r["instruction"], r["output"], "seed",
                           **{k: v for k, v in r.items() if k not in ("id", "instruction", "output", "source")})


def _world_config(ctx: Context):
  from hb_jax.data.synthetic import WorldConfig
  i = ctx.cfg.inputs
  return WorldConfig(seed=i.world_seed, num_countries=i.num_countries, seed_per_family=i.seed_per_family,
                     seed_families=i.seed_families, rating_demos=i.rating_demos, pool_size=i.pool_size,
                     good_fraction=i.good_fraction, heldout_per_family=i.heldout_per_family,
                     pretrain_docs=i.pretrain_docs, web_only_fraction=i.web_only_fraction)


def _prepare_synthetic(ctx: Context) -> dict[str, str]:
  from hb_jax.data import synthetic
  from hb_jax.tokenizer import load_tokenizer, train_sentencepiece

  world = synthetic.build_world(_world_config(ctx), curation_header=ctx.style.curation_header)
  tok_file = ctx.path("work/tokenizer/tokenizer.model")
  if ctx.is_writer:
    seed = world.seed if ctx.cfg.inputs.judging_demos else [r for r in world.seed if not synthetic.is_judging_demo(r)]
    records.write_jsonl(ctx.path("data/seed.jsonl"), seed)
    records.write_jsonl(ctx.path("data/segments.jsonl"), world.pool)
    records.write_jsonl(ctx.path("data/heldout.jsonl"),
                        [{"id": h["id"], "instruction": h["instruction"]} for h in world.heldout])
    # The hidden truth: read by evaluate and report only, never by a stage that builds data or models.
    records.write_jsonl(ctx.path("truth/segments.jsonl"), [{"id": k, **v} for k, v in world.truth.items()])
    records.write_jsonl(ctx.path("truth/heldout.jsonl"), world.heldout)
    records.write_json(ctx.path("truth/world.json"), {"capitals": world.capitals, **synthetic.world_summary(world)})
    if not records.is_committed(tok_file):
      corpus = ctx.path("work/tokenizer/corpus.txt")
      lines = world.pretrain + [r["instruction"] + "\n" + r["output"] for r in world.seed]
      lines += [s["text"] for s in world.pool] + [prompts.BACKWARD_PROMPT, ctx.style.curation_header,
                                                  prompts.TAG_SEED, prompts.TAG_AUGMENTED]
      records.write_bytes_atomic(corpus, "\n".join(l.replace("\n", " ") for l in lines).encode())
      tmp = train_sentencepiece([str(corpus)], ctx.path("work/tokenizer/tmp"), ctx.cfg.base.vocab_size)
      records.write_bytes_atomic(tok_file, epath.Path(tmp).read_bytes())
  ctx.barrier("prepare-data")
  base = ctx.path("models/base")
  if not model_folder.is_model_folder(base):
    _pretrain(ctx, world.pretrain, load_tokenizer(tok_file), tok_file, base)
  ctx.barrier("prepare-base")
  outs = {p: file_hash(ctx.path(p)) for p in ("data/seed.jsonl", "data/segments.jsonl", "data/heldout.jsonl")}
  outs["models/base"] = model_hash(base)
  return outs


def _pretrain(ctx: Context, docs, tok, tok_file, out: epath.Path) -> None:
  """The demo's base model: a preset shape trained from scratch on the world's text (loss on every token)."""
  from hb_jax.data import loader
  from hb_jax.model.presets import preset
  from hb_jax.parallel import TRAIN_RULES, make_mesh, with_overrides
  from hb_jax.train import loop

  tc = ctx.cfg.base.train
  cfg = preset(ctx.cfg.base.preset, vocab_size=tok.vocab_size)
  examples = [loader.example([tok.bos_id], tok.encode(d, eos=True)) for d in docs]
  examples, _ = loader.prepare_examples(examples, tc.seq_len, tc.overlong)
  result = loop.train(loop.training_model_config(cfg, tc), tc, make_mesh(tc.mesh), examples,
                      ctx.path("work/pretrain"), rules=with_overrides(TRAIN_RULES, tc.mesh))
  if not result.completed:
    raise RuntimeError("pretraining was preempted; rerun to continue from its checkpoint")
  model_folder.save_model_folder(out, cfg, result.state.params, tokenizer_file=tok_file, overwrite=True,
                               extra_json={"pretrained_on": "synthetic world", "steps": result.step})


# -------------------------------------------------------------------------------------------------- training
def _finetune(ctx: Context, tc: TrainConfig, name: str, recs: list[dict], data_rel: str,
              tokenize: Callable | None = None) -> dict[str, str]:
  """Trains models/<name> from the base on `recs` (written to data_rel first, for provenance)."""
  from hb_jax.train.finetune import finetune

  out = ctx.path(f"models/{name}")
  if ctx.is_writer:
    records.write_jsonl(ctx.path(data_rel), recs)
  ctx.barrier(f"data-{name}")
  if not model_folder.is_model_folder(out):  # a crash after the model was saved needs no retraining
    res = finetune(tc, ctx.model_dir("base"), ctx.path(data_rel), out, ctx.path(f"work/train/{name}"),
                   records=recs, tokenize=tokenize, overwrite=True, attention=ctx.cfg.model.attention)
    if not res.completed:
      raise RuntimeError(f"training of models/{name} stopped at step {res.step} of {res.num_steps} "
                         "(preempted); rerun to continue from its checkpoint")
  ctx.barrier(f"trained-{name}")
  return {data_rel: file_hash(ctx.path(data_rel)), f"models/{name}": model_hash(out)}


def backward(ctx: Context) -> dict[str, str]:
  seed = list(records.read_pairs(ctx.path("data/seed.jsonl")))
  if not ctx.cfg.ablation.joint:
    return _finetune(ctx, ctx.cfg.backward, "backward", seed, "work/data/backward.jsonl")
  # Joint ablation: one model learns both directions from the same seed pairs and serves as M_yx and M0.
  from hb_jax.tokenizer import load_tokenizer
  from hb_jax.train.finetune import pair_tokenizer
  tok = load_tokenizer(ctx.model_dir("base"))
  fwd = pair_tokenizer(tok, "forward", ctx.train_tag_mode)
  bwd = pair_tokenizer(tok, "backward")
  recs = [{**r, "direction": d} for r in seed for d in ("forward", "backward")]
  tc = dataclasses.replace(ctx.cfg.train, tag_mode=ctx.train_tag_mode)  # what its forward examples carry
  return _finetune(ctx, tc, "backward", recs, "work/data/joint.jsonl",
                   tokenize=lambda r: fwd(r) if r["direction"] == "forward" else bwd(r))


def seed_model(ctx: Context) -> dict[str, str]:
  if ctx.cfg.ablation.joint:
    return {"models/m0": model_hash(ctx.model_dir("m0"))}
  tc = dataclasses.replace(ctx.cfg.train, tag_mode=ctx.train_tag_mode)
  seed = list(records.read_pairs(ctx.path("data/seed.jsonl")))
  return _finetune(ctx, tc, "m0", seed, "work/data/m0.jsonl")


def train_iteration(ctx: Context, t: int) -> dict[str, str]:
  seed = list(records.read_pairs(ctx.path("data/seed.jsonl")))
  if ctx.cfg.ablation.curation:
    chosen = curated(ctx, t)
  else:
    chosen = list(records.read_pairs(ctx.path("augment/candidates.jsonl")))
  tc = dataclasses.replace(ctx.cfg.train, tag_mode=ctx.train_tag_mode)
  return _finetune(ctx, tc, f"m{t}", seed + chosen, f"curate/iter{t}/train.jsonl")


def no_curation(ctx: Context) -> dict[str, str]:
  seed = list(records.read_pairs(ctx.path("data/seed.jsonl")))
  cands = list(records.read_pairs(ctx.path("augment/candidates.jsonl")))
  tc = dataclasses.replace(ctx.cfg.train, tag_mode=ctx.train_tag_mode)
  return _finetune(ctx, tc, "no_curation", seed + cands, "work/data/no_curation.jsonl")


def curated(ctx: Context, t: int) -> list[dict]:
  k = ctx.cfg.curate.k
  name = "A5.jsonl" if k >= 5 else "A4.jsonl" if k == 4 else None
  if name:
    return list(records.read_pairs(ctx.path(f"curate/iter{t}/{name}")))
  scored = records.read_pairs(ctx.path(f"curate/iter{t}/scores.jsonl"))
  return curation.select(list(scored), k, ctx.cfg.curate.method)


# ---------------------------------------------------------------------------------------------------- augment
def augment(ctx: Context) -> dict[str, str]:
  a = ctx.cfg.augment
  lm = ctx.load("backward")
  tok, style = lm.tokenizer, ctx.style
  from hb_jax.sample import plan
  sp = a.sampling
  scfg = engine(ctx.cfg, max_batch=a.batch)
  generated_by = _rel_model(ctx, "backward")

  def encode(segment: dict) -> list[int]:
    return tok.encode(prompts.backward_prompt(segment["text"], style), bos=True)

  def fn(chunk: list[dict], ids: list[list[int]]) -> list[dict]:
    outs = lm.generate(ids, sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
                       seed=[plan.seed_from_id(s["id"], sp.seed) for s in chunk], config=scfg)
    res = []
    for s, o in zip(chunk, outs):
      instruction = tok.decode(o).strip()
      if not instruction:
        continue  # nothing generated; counted by the report as segments without a candidate
      res.append(records.make_pair(instruction, s["text"], "augmented", segment_id=s["id"],
                                   segment_source=s["source"], generated_by=generated_by))
    return res

  out = ctx.path("augment/candidates.jsonl")
  job = jobs.BulkJob(lambda: records.read_segments(ctx.path("data/segments.jsonl")), out,
                     parts=ctx.path("augment/parts"), name="candidates", key="segment_id", share=ctx.share,
                     chunk_records=a.chunk_records)
  job.run(fn, encode=encode, barrier=ctx.barrier, desc="augment", progress=ctx.cfg.progress)
  return {"augment/candidates.jsonl": file_hash(out)}


def _rel_model(ctx: Context, name: str) -> str:
  """The model folder as recorded in provenance: relative to the workdir when inside it."""
  d = ctx.model_dir(name)
  try:
    return str(d.relative_to(ctx.workdir))
  except ValueError:
    return str(d)


# ----------------------------------------------------------------------------------------------------- curate
def curate(ctx: Context, t: int) -> dict[str, str]:
  c = ctx.cfg.curate
  rater = "m0" if t == 1 else f"m{t - 1}"
  cands = list(records.read_pairs(ctx.path("augment/candidates.jsonl")))
  lm = ctx.load(rater)
  rated_by = _rel_model(ctx, rater)
  d = f"curate/iter{t}"
  outs = {}
  methods = [c.method] + [m for m in c.compare if m != c.method]
  sample = curation.sample_ids(cands, c.generate_sample, c.sampling.seed)
  for method in methods:
    subset = cands if method == c.method or method != "generate" else [x for x in cands if x["id"] in sample]

    def fn(chunk, encoded, method=method):
      scores = curation.score_encoded(method, lm, chunk, encoded, curate=c, style=ctx.style,
                                      tag_mode=ctx.train_tag_mode, engine=engine(ctx.cfg))
      return [{**x, **s, "method": method, "iteration": t, "rated_by": rated_by, "candidate_id": x["id"]}
              for x, s in zip(chunk, scores)]

    encode = curation.encoder(method, lm.tokenizer, style=ctx.style, tag_mode=ctx.train_tag_mode)
    out = ctx.path(f"{d}/scores_{method}.jsonl")
    job = jobs.BulkJob(subset, out, parts=ctx.path(f"{d}/parts"), name=method, key="candidate_id",
                       share=ctx.share, chunk_records=c.chunk_records)
    job.run(fn, encode=encode, barrier=ctx.barrier, desc=f"curate_{t} {method}", progress=ctx.cfg.progress)
    outs[f"{d}/scores_{method}.jsonl"] = file_hash(out)
  if ctx.is_writer:
    scored = [_strip(r) for r in records.read_jsonl(ctx.path(f"{d}/scores_{c.method}.jsonl"))]
    records.write_jsonl(ctx.path(f"{d}/scores.jsonl"), scored)
    records.write_jsonl(ctx.path(f"{d}/A4.jsonl"), curation.select(scored, 4, c.method))
    records.write_jsonl(ctx.path(f"{d}/A5.jsonl"), curation.select(scored, 5, c.method))
  ctx.barrier(f"curate-{t}-done")
  for name in ("scores.jsonl", "A4.jsonl", "A5.jsonl"):
    outs[f"{d}/{name}"] = file_hash(ctx.path(f"{d}/{name}"))
  return outs


def _strip(r: dict) -> dict:
  r = dict(r)
  r.pop("candidate_id", None)
  return r


# --------------------------------------------------------------------------------------------------- evaluate
def eval_models(ctx: Context) -> dict[str, str]:
  """Report key -> model name, for the models this run trains."""
  T = ctx.cfg.curate.iterations if ctx.cfg.ablation.curation else 1
  out = {"seed_only": "m0"}
  if ctx.cfg.ablation.baselines and ctx.cfg.ablation.curation:
    out["no_curation"] = "no_curation"
  for t in range(1, T + 1):
    out[f"m{t}"] = f"m{t}"
  if not ctx.cfg.ablation.curation:
    out["no_curation"] = "m1"
  return out


def evaluate(ctx: Context) -> dict[str, str]:
  e = ctx.cfg.evaluate
  held_path = ctx.path("data/heldout.jsonl")
  if not held_path.exists():
    log.warning("evaluate: no held-out instructions (inputs.heldout_jsonl); nothing to evaluate")
    return {}
  held = list(records.read_jsonl(held_path, ("id", "instruction")))
  if e.max_items:
    held = held[:e.max_items]
  tag_mode = e.tag_mode if ctx.cfg.ablation.tags else "none"
  outs, answered = {}, {}
  for key, name in eval_models(ctx).items():
    # "both" tags is the paper's inference setting for models trained on seed + augmented data; the
    # seed-only model never saw the web-search tag, so it is asked in the one format it was trained on.
    model_tag_mode = "seed" if (key == "seed_only" and tag_mode == "both") else tag_mode
    out = ctx.path(f"evaluate/{key}.jsonl")
    same = answered.get((name, model_tag_mode))
    if same is not None:  # without curation, no_curation is m1: its greedy answers are the same bytes
      if ctx.is_writer:
        records.write_bytes_atomic(out, same.read_bytes())
      ctx.barrier(f"evaluate-{key}-copied")
    else:
      lm = ctx.load(name)
      heldout_answers(ctx, lm, held, model_tag_mode, ctx.path("evaluate/parts"), key, out, model=name,
                      desc=f"evaluate {key}")
      del lm
      answered[(name, model_tag_mode)] = out
    outs[f"evaluate/{key}.jsonl"] = file_hash(out)
  return outs


def heldout_answers(ctx: Context, lm, held: list[dict], tag_mode: str, parts: epath.Path, name: str,
                    out: epath.Path, *, model: str, desc: str) -> None:
  """Greedy answers of `lm` to `held` (the forward prompt with `tag_mode`'s tag, the evaluate settings),
  sharded over processes and committed in chunks `parts/<name>-*`; process 0 merges them into `out`."""
  from hb_jax.sample import plan
  e = ctx.cfg.evaluate
  tok = lm.tokenizer
  sp = e.sampling
  scfg = engine(ctx.cfg, max_batch=e.batch)
  tag = prompts.tag_for(None, tag_mode, ctx.style)

  def encode(h: dict) -> list[int]:
    return tok.encode(prompts.forward_prompt(h["instruction"], tag, ctx.style), bos=True)

  def fn(chunk: list[dict], ids: list[list[int]]) -> list[dict]:
    gens = lm.generate(ids, sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
                       seed=[plan.seed_from_id(h["id"], sp.seed) for h in chunk], config=scfg)
    return [{"id": h["id"], "instruction": h["instruction"], "output": tok.decode(g).strip(), "model": model}
            for h, g in zip(chunk, gens)]

  job = jobs.BulkJob(held, out, parts=parts, name=name, share=ctx.share, chunk_records=256)
  job.run(fn, encode=encode, barrier=ctx.barrier, desc=desc, progress=ctx.cfg.progress)


# ----------------------------------------------------------------------------------------------------- report
def report(ctx: Context) -> dict[str, str]:
  from hb_jax.pipeline import report as report_lib
  if ctx.is_writer:
    report_lib.write_report(ctx)
  ctx.barrier("report")
  return {p: file_hash(ctx.path(p)) for p in ("report/summary.json", "report/report.md")}


# ------------------------------------------------------------------------------------------------ finetune
def finetune_one(ctx: Context, train_jsonl: str, output: str, direction: str = "forward") -> dict[str, str]:
  """`--stage=finetune`: one model from the base on one JSONL (tags by each record's source)."""
  from hb_jax.train.finetune import finetune
  tc = dataclasses.replace(ctx.cfg.train if direction == "forward" else ctx.cfg.backward,
                           tag_mode=ctx.train_tag_mode)
  out = epath.Path(output) if output else ctx.path("models/finetuned")
  res = finetune(tc, ctx.model_dir("base"), train_jsonl, out, ctx.path(f"work/train/{out.name}"), overwrite=True,
                 attention=ctx.cfg.model.attention)
  if not res.completed:
    raise RuntimeError(f"finetune stopped at step {res.step} of {res.num_steps}; rerun to continue")
  return {"model": model_hash(out)}


Runner = Callable[[Context], dict[str, Any]]
