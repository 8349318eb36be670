"""Generation and scoring.

sampling.py  greedy / temperature / top-k / top-p as pure functions of logits and per-row keys
plan.py      length and batch buckets, shared-prefix detection, per-record seeds
sampler.py   Sampler: prefill + jitted while_loop decode over a per-row KV cache, continuous batching
scoring.py   Scorer: teacher-forced loglikelihood and next-token odds over candidate tokens
"""
