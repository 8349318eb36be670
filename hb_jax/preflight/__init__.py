"""Preflight: every program of a run, compiled ahead of time for the pod it will run on, without weights.

    python tools/preflight.py --config=configs/llama7b.py:tpu-v5p [--topology=v5p-16] [--json]

A TPU pod can be described on a CPU machine (libtpu, the `tpu` extra): jax builds compile-only devices for a
slice and the TPU compiler compiles for them, so every stage's jitted programs (the train step, the sampler's
prefix, refill, decode loop and compaction, the scorer's forwards) are lowered from abstract, sharded inputs
and compiled as the pod would, and the compiler says what each takes: HBM per chip (arguments, outputs,
temporaries, code) and FLOPs and bytes per call. Beside each figure: hb_jax.estimate's, with the ratio.

  libtpu.py    libtpu on a machine without TPU chips: quiet for CPU work, loadable for compiling
  topology.py  slice names (v4-32, v5p-16, v5e-256, cpu-8) -> compile-only devices, hosts, HBM per device
  hlo_cost.py  FLOPs and bytes of a compiled program with every loop body counted by its trip count
  programs.py  what each stage compiles, built by the pipeline's own code from abstract inputs, and the estimate
  run.py       compile them, measure, decide what fits -> a Report
  report.py    the report as a table and as JSON
  cli.py       `hb-preflight` / tools/preflight.py / `launch/run.py --preflight`
"""
