"""Shared settings of the paper-scale configs (configs/llama*.py): the paper's inputs read from files, its
training and decoding settings, and the paper's Table-1 curation prompt with `generate` as the headline.

Inputs (prepare them with tools/prepare_seed.py, tools/prepare_corpus.py and tools/convert_llama.py):
  seed_jsonl      3,200 oasst1 first-turn pairs          (inputs.seed_jsonl)
  segments_jsonl  ~502k ClueWeb segments                 (inputs.segments_jsonl)
  base_model      a converted LLaMA model folder         (inputs.base_model)
Paths may be object-store URLs; so may --workdir.
"""
from ml_collections import config_dict


def paper_train(seq_len=2048, **kw):
  # lr 1e-5 -> 9e-6 linear, wd 0.1, dropout 0.1, batch by data size and steps by the paper's table (0 = rule).
  return dict(learning_rate=1e-5, end_learning_rate=9e-6, weight_decay=0.1, dropout_rate=0.1, batch_size=0,
              num_steps=0, seq_len=seq_len, checkpoint_every=100, keep_checkpoints=2, async_checkpointing=True,
              log_every=10, **kw)


def base_config(name, root, mesh, micro_batches=1, infer_batch=64, remat="full"):
  c = config_dict.ConfigDict()
  c.name = name
  c.progress = True
  c.inputs = dict(kind="files", seed_jsonl=f"{root}/inputs/seed.jsonl",
                  segments_jsonl=f"{root}/inputs/segments.jsonl", heldout_jsonl="",
                  base_model=f"{root}/models/{name}", max_segments=0)
  train_mesh = dict(mesh_data=mesh["data"], mesh_fsdp=mesh["fsdp"], mesh_tensor=mesh["tensor"])
  c.backward = paper_train(direction="backward", micro_batches=micro_batches, remat=remat, **train_mesh)
  c.train = paper_train(micro_batches=micro_batches, remat=remat, **train_mesh)
  c.augment = dict(temperature=0.7, top_p=0.9, max_new_tokens=256, batch=infer_batch, chunk_records=4096, seed=0)
  c.curate = dict(method="generate", k=5.0, iterations=2, compare=("generate", "digits", "likelihood"),
                  generate_sample=0, temperature=0.7, top_p=0.9, max_new_tokens=256, batch=infer_batch,
                  chunk_records=4096, header="paper", seed=0)
  c.ablation = dict(tags=True, curation=True, joint=False, baselines=True)
  c.evaluate = dict(max_new_tokens=512, batch=infer_batch, tag_mode="both", max_items=0)
  # Inference replicas: each process serves its share of the records with the weights split over tensor.
  c.mesh = dict(data=-1, fsdp=1, tensor=mesh["infer_tensor"])
  return c
