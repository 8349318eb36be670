"""A seconds-scale run of every stage for tests and CI: a small world, the tiny preset, a few steps each.
It checks the machinery (manifest, resume, sharding), not the method's effect (see configs/demo.py)."""
from hb_jax.pipeline.config import defaults


def train_cfg(steps, lr=3e-3, batch=8, seq_len=384, **kw):
  return dict(learning_rate=lr, end_learning_rate=lr / 10, warmup_steps=0, weight_decay=0.0, dropout_rate=0.0,
              batch_size=batch, num_steps=steps, seq_len=seq_len, checkpoint_every=4, keep_checkpoints=1,
              async_checkpointing=False, log_every=4, progress_bar=False, rows_per_micro_batch=0, loss_chunk=0, **kw)


def get_config():
  c = defaults("tiny")
  c.progress = False
  c.update(dict(
      inputs=dict(kind="synthetic", world_seed=1, num_countries=8, seed_per_family=2, rating_demos=6,
                  pool_size=40, good_fraction=0.4, heldout_per_family=3, pretrain_docs=60),
      base=dict(preset="tiny", vocab_size=400, train=train_cfg(6, seq_len=128)),  # pretraining docs are short
      backward=train_cfg(4),
      train=train_cfg(4),
      augment=dict(sampling=dict(temperature=0.7, top_p=0.9, max_new_tokens=8, seed=0), batch=16, chunk_records=16),
      # The paper's path: generate with the Table-1 rubric selects the data. Six new tokens hold no `Score: k`,
      # so every rating takes the fallback route (p("1".."5") after the reasoning, the digits rater's program
      # on longer rows, which is why `digits` is not compared here); k=4 is A4.
      curate=dict(method="generate", k=4.0, iterations=2, compare=("generate", "likelihood"),
                  sampling=dict(temperature=0.7, top_p=0.9, max_new_tokens=6, seed=0), batch=16,
                  chunk_records=16, header="paper"),
      evaluate=dict(sampling=dict(max_new_tokens=8), batch=16, tag_mode="both", max_items=0),
      # --stage=scaling: the tiny world's curated sets hold a handful of pairs, so two sizes of its 14 seed
      # pairs (human written, i.e. curated); the stage then needs only `prepare` before it.
      scaling=dict(sizes=(4, 12), steps=(2, 2), data="data/seed.jsonl"),
      # One prompt bucket holds every prompt of this world (augment, curation and evaluation suffixes are all
      # under 128 tokens; the rubric is a shared prefix): each bucket is a set of programs every launch
      # compiles, and the tests launch this config a dozen times. How stages run, not what they compute: no
      # stage's hash holds it.
      length_buckets=(128, 256, 512, 1024, 2048, 4096, 8192),
  ))
  return c
