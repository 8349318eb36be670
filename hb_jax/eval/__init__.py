"""Evaluation: AlpacaEval-format generation, a local pairwise judge, multiple-choice log-likelihood.

  generate.py          answers for a file of instructions with the paper's decoding -> AlpacaEval outputs
  judge.py             a local model compares two output files in both orders (no free decoding)
  multiple_choice.py   MMLU-style accuracy from choice log-likelihoods (summed and per token), k-shot
  templates.py         the judge and multiple-choice prompt templates (the method's own are in data/prompts.py)
  io.py                reading instruction/output files (JSONL or AlpacaEval's JSON list), atomic writes
  scaling.py           the data-scaling fit (win rate = alpha * log N + C) and nested subsets
"""
