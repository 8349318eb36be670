"""Generation and scoring.

sampling.py  greedy / temperature / top-k / top-p as pure functions of logits and per-row keys
plan.py      length and batch buckets, shared-prefix detection, per-record seeds
prefix.py    a prompt head every row shares: its length and padded arrays
programs.py  the device programs, jitted pure functions of (static settings, params, arrays): prefill of the
             shared prefix, refill, the while_loop decode, compaction, the scoring forwards
scheduler.py the host side: token checks, row packing, the scorer's batches, the sampler's continuous
             batching (queue, refills, compaction) and stop rules (stop sequences, stop strings)
engine.py    Engine: a model's params on a mesh, the shared prefix, compile and token counts
sampler.py   Sampler(Engine): generation, the scheduler driving the programs per length bucket
scoring.py   Scorer(Engine): teacher-forced loglikelihood and next-token odds over candidate tokens
"""
