"""The embedded default: the synthetic world (hb_jax/data/synthetic.py), a tiny LLaMA pretrained on its text
on CPU, then the whole method on it. What `python launch/run.py` and `make demo` run (~15 min on 2 cores).

The world is sized for what a 1M-parameter model can learn on 2 cores: the base reads 30,000 generated
documents (1,000 steps), and the seed has 24 pairs per task family. With 4 per family the backward model
memorised its few targets and copied almost no country or number from the segment (~3% of good segments got the
right question); with 24 pairs and 200 steps at lr 1e-3 it gets 83% of the known countries' capitals (none of
the web-only ones, below), 54% of additions and 83% of conversions right. Reversing three words stays beyond
these models.

Half the countries are web-only (`inputs.web_only_fraction=0.5`): pretraining names them and their cities but
never says which city is the capital, and the seed never asks about them; only pool segments state it. The
1M-parameter backward model cannot carry that over: for "The capital of X is Y." with X web-only it asks
about a country whose capital it knows (recall, not copying), so no model answers the "capital-web" held-out
items and their candidates are the mismatched pairs that curation exists to remove. Measured on this world
with three finetuning seeds (`--config.train.seed=0,1,2`), M2 beat the seed-only model each time (15-19 wins
against 0-4 losses, p <= 0.02) and the no-curation model each time (p <= 0.004); see docs/pipeline.md.

Held-out answers are generated with the seed tag (`evaluate.tag_mode="seed"`), the prompt the seed-only
model was trained on, for every model. The paper's best setting appends both tags, but a model this small
never saw the two sentences together (measured on this world with the 3-D einsum projections: M2 0.27 with
both tags, 0.42 with the seed tag, 0.44 with the web tag; M1 0.23 / 0.41 / 0.42).

The forward models train at lr 2e-3 for 120 steps. At 1e-3 (measured with world_seed=1) every model keeps
more of what the base knew: the seed-only model reaches 0.60 and M2 0.62 (no significant gap; the curated
pairs are of the families the seed already covers), and the model trained on every candidate falls to 0.34.

Settings differ from the paper where a 1M-parameter model needs it: augment temperature 0.5 (its
distributions are flatter than a 7B model's), learning rates ~100x higher, no dropout,
a fixed number of steps per model, a compact judging rubric (the paper's header alone would be ~300 tokens of
this vocabulary). The headline curation method is `likelihood` with k=5 (A5: rating >= 4.5, i.e. the rater
gives the answer's tokens a geometric-mean probability >= 0.875): a model this small judges the *segment*
(boilerplate, chatter) when prompted but not whether the backtranslated instruction matches it, which the
likelihood of the output given the instruction measures directly. `generate` (the paper's, on a sample) and
`digits` score the same candidates for the report.
"""
from hb_jax.pipeline.config import defaults


def train_cfg(steps, lr, batch=16, seq_len=256, **kw):
  return dict(learning_rate=lr, end_learning_rate=lr / 10, warmup_steps=10, weight_decay=0.0, dropout_rate=0.0,
              batch_size=batch, num_steps=steps, seq_len=seq_len, checkpoint_every=50, keep_checkpoints=1,
              async_checkpointing=False, log_every=25, loss_chunk=0, **kw)


def get_config():
  c = defaults("demo")
  c.update(dict(
      inputs=dict(kind="synthetic", world_seed=0, num_countries=60, seed_per_family=24, rating_demos=40,
                  pool_size=900, good_fraction=0.35, heldout_per_family=40, pretrain_docs=30000,
                  seed_families=("capital", "add", "convert", "reverse"), web_only_fraction=0.5),
      base=dict(preset="demo", vocab_size=1024, train=train_cfg(1000, 3e-3, batch=32, seq_len=128)),
      backward=train_cfg(200, 1e-3),
      train=train_cfg(120, 2e-3),
      augment=dict(sampling=dict(temperature=0.5, top_p=0.9, max_new_tokens=24, seed=0), batch=64,
                   chunk_records=256),
      curate=dict(method="likelihood", k=5.0, iterations=2, compare=("generate", "digits", "likelihood"),
                  generate_sample=128, sampling=dict(temperature=0.7, top_p=0.9, max_new_tokens=16, seed=0),
                  batch=64, chunk_records=256, header="compact"),
      evaluate=dict(sampling=dict(max_new_tokens=24), batch=64, tag_mode="seed", max_items=0),
      # `--stage=scaling` (after a run): the demo's A5 set alone is ~96 pairs, so the subsets are drawn from the
      # seed plus A5 of the last iteration (the data M2 trains on); steps grow with N as in the paper's table.
      scaling=dict(sizes=(14, 28, 56, 112), steps=(60, 80, 100, 120), data="curated+seed"),
  ))
  return c
