"""Shared settings of the paper-scale configs (configs/llama*.py): the paper's inputs read from files, its
training and decoding settings, the paper's Table-1 curation prompt with `generate` as the headline, and one
layout per kind of hardware.

Inputs (prepare them with tools/prepare_seed.py, tools/prepare_corpus.py and tools/convert_llama.py):
  seed_jsonl      3,200 oasst1 first-turn pairs          (inputs.seed_jsonl)
  segments_jsonl  ~502k ClueWeb segments                 (inputs.segments_jsonl)
  base_model      a converted LLaMA model folder         (inputs.base_model; convert with
                  --param_dtype bfloat16: every model folder keeps the base's dtype, and serving reads it)
Paths may be object-store URLs; so may --workdir.

Hardware variants: `--config=configs/llama65b.py:tpu-v5p` passes 'tpu-v5p' to get_config (ml_collections'
`path:argument` form); no suffix means 'h100'. Every variant keeps the paper's settings; only the meshes,
micro-batches and inference batches differ. Pick one per workdir: the stage hashes in manifest.json include
train.mesh / micro_batches and the augment/curate/evaluate batches, so another variant on the same workdir
is refused for finished stages and restarts half-done ones (see docs/launch.md).

Training mesh: (data=1, fsdp=-1, tensor=T): FSDP over every device the tensor axis leaves, so a bigger slice
than the reference one only lowers memory per device. Tensor parallelism keeps the batch shards few: the
paper's 32-example step is only ~13k tokens (~7 rows of 2048), and every batch shard runs at least one row,
padded if need be. Constraints the configs respect (tests/test_estimate.py):
T divides the heads, KV heads, FFN width and vocab, and fsdp divides the width (hb_jax.parallel replicates a
dimension its mesh axis does not divide); 32 examples per step divide by processes x micro-batches
(hb_jax.data.loader.plan_batches). Inference: each process serves its share of the records with replicas of
`infer_tensor` chips on its own devices (config.mesh), so a replica must fit in one host.
"""
import dataclasses

from hb_jax.pipeline.config import defaults


@dataclasses.dataclass(frozen=True)
class Layout:
  """One hardware variant of a config. The memory arithmetic in each config's docstring is for `chips`."""
  hardware: str  # a key of hb_jax.estimate.HARDWARE
  slice: str  # what to provision
  chips: int  # devices in that slice
  tensor: int  # training tensor-parallel ways (fsdp takes the rest)
  micro_batches: int  # gradient accumulation: the 32-example step in this many parts
  infer_tensor: int  # chips per inference replica (within one host)
  augment_batch: int  # decode rows per process (split over its replicas); powers of two
  curate_batch: int
  evaluate_batch: int
  serves: bool = True  # False: a replica does not fit in one host; run augment/curate/evaluate elsewhere


def paper_train(seq_len=2048, **kw):
  # lr 1e-5 -> 9e-6 linear, wd 0.1, dropout 0.1, batch by data size and steps by the paper's table (0 = rule).
  return dict(learning_rate=1e-5, end_learning_rate=9e-6, weight_decay=0.1, dropout_rate=0.1, batch_size=0,
              num_steps=0, seq_len=seq_len, checkpoint_every=100, keep_checkpoints=2, async_checkpointing=True,
              log_every=10, loss_chunk=0, **kw)


def pick(layouts, hardware, where):
  if hardware not in layouts:
    raise ValueError(f"{where}: unknown hardware variant {hardware!r}; expected one of {sorted(layouts)} "
                     f"(e.g. --config={where}:{sorted(layouts)[0]})")
  return layouts[hardware]


def base_config(name, root, layout, remat="full"):
  c = defaults(name)
  train_mesh = dict(mesh=dict(data=1, fsdp=-1, tensor=layout.tensor))
  c.update(dict(
      inputs=dict(kind="files", seed_jsonl=f"{root}/inputs/seed.jsonl", segments_jsonl=f"{root}/inputs/segments.jsonl",
                  heldout_jsonl="", base_model=f"{root}/models/{name}", max_segments=0),
      backward=paper_train(micro_batches=layout.micro_batches, remat=remat, **train_mesh),
      train=paper_train(micro_batches=layout.micro_batches, remat=remat, **train_mesh),
      augment=dict(sampling=dict(temperature=0.7, top_p=0.9, max_new_tokens=256, seed=0), batch=layout.augment_batch,
                   chunk_records=4096),
      curate=dict(method="generate", k=5.0, iterations=2, compare=("generate", "digits", "likelihood"),
                  generate_sample=0, sampling=dict(temperature=0.7, top_p=0.9, max_new_tokens=256, seed=0),
                  batch=layout.curate_batch, chunk_records=4096, header="paper"),
      evaluate=dict(sampling=dict(max_new_tokens=512), batch=layout.evaluate_batch, tag_mode="both", max_items=0),
      # Inference replicas: each process serves its share of the records with the weights split over tensor.
      mesh=dict(data=-1, fsdp=1, tensor=layout.infer_tensor),
  ))
  return c
