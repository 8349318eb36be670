"""Train-step throughput: hb_jax (jitted sharded step, AdamW, clipping) vs transformers LlamaForCausalLM +
torch AdamW, same model, batch and precision, in one process; MFU against a measured square matmul rate.

    python bench/run.py train [--steps 6] [--rounds 2] [--batch 8] [--seq 256] [--matmul 2048] [--no-reference]
                              [--no-chunked]

hb_jax runs its default attention (xla's einsum on CPU) and, beside it, the blockwise `chunked` attention
(hb_jax.model.attention), whose tokens/s is reported with its ratio to the default.

Both sides: fp32, loss on every token, dropout off, global-norm clipping at 1.0, AdamW(0.9, 0.95, wd 0.1).
tokens/s counts batch x seq tokens per step; MFU = 6 x non-embedding params + causal attention FLOPs per
token (hb_jax.train.metrics) x tokens/s / the measured fp32 matmul FLOP/s of this machine.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

CONFIG_58M = dict(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1408,
                  max_position_embeddings=2048)


def matmul_fns(n: int) -> dict[str, callable]:
  """One n x n fp32 matmul each in XLA (jax) and torch (2 n^3 FLOPs per call)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  out = {"jax": lambda: f(a, b).block_until_ready()}
  try:
    import torch
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    out["torch"] = lambda: ta @ tb
  except ImportError:
    pass
  return out


def setup_ours(batch: int, seq: int, scan_unroll: int = 1, loss_chunk: int = 0, attention: str = "auto"):
  """(one-step closure, info) for the hb_jax train step, compiled and warm-started."""
  import jax

  from hb_jax.config import ModelConfig, TrainConfig
  from hb_jax.data import loader
  from hb_jax.parallel import make_mesh, MeshConfig
  from hb_jax.train import step as step_lib

  cfg = ModelConfig(**CONFIG_58M, dtype="float32", scan_unroll=scan_unroll, loss_chunk=loss_chunk,
                    attention=attention)
  tc = TrainConfig(learning_rate=1e-5, end_learning_rate=9e-6, dropout_rate=0.0)
  mesh = make_mesh(MeshConfig(1, -1, 1))
  tx, sched = step_lib.make_optimizer(tc, 1000)
  state = step_lib.init_state(cfg, tx, mesh, seed=0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
  host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((batch, seq), np.float32),
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
          "segment_ids": np.ones((batch, seq), np.int32)}
  fn = step_lib.jit_train_step(cfg, tx, sched, mesh)
  holder = {"state": state}
  with jax.set_mesh(mesh):
    gb = loader.global_batch({k: v[None] for k, v in host.items()}, mesh)
    t0 = time.perf_counter()
    compiled = fn.lower(holder["state"], gb).compile()
    compile_s = time.perf_counter() - t0

  def one():
    with jax.set_mesh(mesh):
      holder["state"], m = compiled(holder["state"], gb)
      jax.block_until_ready(m)

  return one, {"compile_s": compile_s, "params": cfg.num_params, "flops_per_token": _flops_per_token(cfg, seq)}


def _flops_per_token(cfg, seq):
  from hb_jax.train.metrics import flops_per_token
  return flops_per_token(cfg, seq)


def setup_torch(batch: int, seq: int):
  """(one-step closure, info) for transformers LlamaForCausalLM + torch AdamW."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(0)
  c = CONFIG_58M
  hf = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                   num_hidden_layers=c["num_layers"], num_attention_heads=c["num_heads"],
                   num_key_value_heads=c["num_heads"], max_position_embeddings=c["max_position_embeddings"],
                   attention_dropout=0.0, tie_word_embeddings=False)
  model = LlamaForCausalLM(hf).float().train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
  ids = torch.randint(3, c["vocab_size"], (batch, seq + 1))
  inputs, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

  def one():
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  return one, {"threads": torch.get_num_threads()}


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="bench/run.py train")
  parser.add_argument("--steps", type=int, default=6, help="timed steps per contender, over all rounds")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--scan_unroll", type=int, default=CONFIG_58M["num_layers"],
                      help="ModelConfig.scan_unroll (default: all 8 layers unrolled; 1 = the rolled scan)")
  parser.add_argument("--loss_chunk", type=int, default=128,
                      help="ModelConfig.loss_chunk (default 128 positions per chunk; 0 = the whole logits)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--matmul", type=int, default=2048)
  parser.add_argument("--no-reference", dest="reference", action="store_false")
  parser.add_argument("--no-chunked", dest="chunked", action="store_false",
                      help="skip the chunked-attention contender")
  args = parser.parse_args(argv)

  import jax
  # The contenders run in alternating blocks (ours x steps, torch x steps, matmuls, then again for
  # --rounds rounds) and report medians, so a neighbour's load on this shared machine slows all of them
  # alike. Each block starts with one untimed step: the first XLA step right after torch has run took
  # 1.2-1.5 s longer than the steady state here (4.9 s), and a training loop never pays that.
  fns = {"ours": setup_ours(args.batch, args.seq, args.scan_unroll, args.loss_chunk)}
  if args.chunked:
    fns["chunked"] = setup_ours(args.batch, args.seq, args.scan_unroll, args.loss_chunk, attention="chunked")
  if args.reference:
    fns["reference"] = setup_torch(args.batch, args.seq)
  mm = matmul_fns(args.matmul)
  times = {k: [] for k in list(fns) + [f"matmul_{k}" for k in mm]}
  per_round = max(1, -(-args.steps // args.rounds))
  for _ in range(args.rounds):
    for k, (fn, _) in fns.items():
      fn()
      for _ in range(per_round):
        t = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t)
    for k, fn in mm.items():
      fn()
      for _ in range(3):
        t = time.perf_counter()
        fn()
        times[f"matmul_{k}"].append(time.perf_counter() - t)
  med = {k: float(np.median(v)) for k, v in times.items()}
  tokens = args.batch * args.seq
  peak = {k: 2 * args.matmul ** 3 / med[f"matmul_{k}"] for k in mm}
  ours = {"tokens_per_s": tokens / med["ours"], "step_s": med["ours"], **fns["ours"][1]}
  ref = {"tokens_per_s": tokens / med["reference"], "step_s": med["reference"]} if args.reference else None
  mfu = ours["flops_per_token"] * ours["tokens_per_s"] / peak["jax"]
  rows = [("hb_jax (jit, AdamW)", ours["tokens_per_s"], ours["step_s"], mfu)]
  chunked = tokens / med["chunked"] if args.chunked else None
  if chunked:
    rows.append(("hb_jax, chunked attention", chunked, med["chunked"], ours["flops_per_token"] * chunked / peak["jax"]))
  if ref:
    rows.append(("transformers + torch AdamW", ref["tokens_per_s"], ref["step_s"],
                 ours["flops_per_token"] * ref["tokens_per_s"] / peak["jax"]))
  print(f"train step, 58M LLaMA (vocab 32000, d 512, 8 layers, 8 heads, FFN 1408), fp32, "
        f"batch {args.batch} x {args.seq}, {jax.device_count()} {jax.default_backend()} device(s), "
        f"{os.cpu_count()} cores")
  print(f"measured {args.matmul}^2 fp32 matmul: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()))
  print(f"{'implementation':30s} {'tokens/s':>10s} {'s/step':>8s} {'MFU':>7s}")
  for name, tps, s, m in rows:
    print(f"{name:30s} {tps:10.1f} {s:8.3f} {m:7.1%}")
  ratio = ours["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
  print(f"ratio (ours / reference): {ratio:.2f}x; hb_jax compile {ours['compile_s']:.1f}s")
  if chunked:
    print(f"chunked attention / default: {chunked / ours['tokens_per_s']:.2f}x tokens/s")
  return {"ours": round(ours["tokens_per_s"], 2), "reference": round(ref["tokens_per_s"], 2) if ref else None,
          "ratio": round(ratio, 3), "unit": "tokens/s", "mfu": round(mfu, 4),
          "chunked": round(chunked, 2) if chunked else None,
          "matmul_gflops": {k: round(v / 1e9, 2) for k, v in peak.items()},
          "batch": args.batch, "seq": args.seq, "steps": args.steps, "rounds": args.rounds,
          "scan_unroll": args.scan_unroll, "loss_chunk": args.loss_chunk, "dtype": "float32",
          "model": "58M (vocab 32000, d 512, 8 layers, 8 heads, ffn 1408)",
          "devices": f"{jax.device_count()} {jax.default_backend()}", "cores": os.cpu_count()}
