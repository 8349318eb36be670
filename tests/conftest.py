"""Test-wide set-up: 8 simulated CPU devices, so mesh tests run anywhere.

XLA reads the flag once, at backend start, so it must be set before anything imports jax.

`model_dir` / `lm`: one tiny model folder (random weights + a small sentencepiece tokenizer) for the tests
that need a model with a tokenizer and not a trained one (evaluators, curation). Session-scoped and built
only when a test asks for it: the folder is saved and opened with `hb_jax.api.load`, the path every
command line takes. One model, so jitted programs are shared.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache per test session, made by the first process (pytest's, before xdist
# starts its workers, which inherit it) and shared by the workers: a program (of >= 1 s of compiling, JAX's
# threshold) that tests in both workers build compiles once. Fresh each session, so no run reuses another's.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hb_jax_tests_xla_")

import random  # noqa: E402  (after the environment above)

import pytest  # noqa: E402

from hb_jax import api, model_folder  # noqa: E402
from hb_jax.config import ModelConfig  # noqa: E402
from hb_jax.tokenizer import load_tokenizer, train_sentencepiece  # noqa: E402

from tests.eval.common import WORDS, random_params  # noqa: E402


# The longest files, longest first (seconds each took in one `make test` on this 2-core machine, two workers:
# e2e 170, real model 95, preflight 80, train step 60, model 60, sampler 55, attention 50, train resume 45,
# multi-process 45, sample programs 30).
LONGEST_FIRST = ("pipeline/test_e2e.py", "test_real_model.py", "test_preflight.py", "train/test_train_step.py",
                 "test_model.py", "sample/test_sampler.py", "test_attention.py", "train/test_train_resume.py",
                 "test_multiprocess.py", "sample/test_programs.py")


def pytest_collection_modifyitems(session, config, items):
  """The longest files run first (LONGEST_FIRST), then the other files holding `slow` tests, then the rest. The
  Makefile spreads whole files over two workers in collection order (`--dist loadfile --no-loadscope-reorder`),
  each worker taking the next file as it runs out: longest first keeps one worker from picking up a minute-long
  file while the other has already run out of work. A file missing from the list only runs later."""
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  rank = {os.path.join(tests_dir, rel): i for i, rel in enumerate(LONGEST_FIRST)}
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  # stable: order within each group is kept
  items.sort(key=lambda item: (rank.get(str(item.path), len(rank)), item.path not in slow_files))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_model")
  rng = random.Random(0)
  corpus = root / "corpus.txt"
  lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(2000)]
  corpus.write_text("\n".join(lines + ["[INST] Answer: A. B. C. D. ? [/INST]"] * 50) + "\n")
  tok_file = train_sentencepiece([str(corpus)], root / "tok", vocab_size=400)
  tok = load_tokenizer(tok_file)
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=64, max_position_embeddings=512)
  return model_folder.save_model_folder(root / "model", cfg, random_params(cfg), tokenizer_file=tok_file)


@pytest.fixture(scope="session")
def lm(model_dir):
  return api.load(model_dir)
