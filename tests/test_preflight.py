"""Preflight (hb_jax/preflight/): every stage of a run compiled for a TPU slice on this CPU machine, measured.

One compile of the tiny run for v5e-8 serves most tests (module fixture, ~1 min): a model whose dimensions are
multiples of 128, so the TPU's (8, 128) tiles pad nothing and byte counts can be compared exactly. The 7B-70B
tables are in docs/launch.md (a documented command, not a test).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hb_jax.config import ConfigError, ModelConfig
from hb_jax.estimate import memory as est_memory
from hb_jax.parallel import SERVE_RULES, TRAIN_RULES
from hb_jax.preflight import cli, libtpu, topology
from hb_jax.preflight.report import format_markdown, format_text
from hb_jax.preflight.run import preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
# Every dimension a multiple of 128 (heads of 128, FFN 512, vocab 512); 2 layers.
MODEL = ModelConfig(vocab_size=512, hidden_size=256, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=128,
                    intermediate_size=512, max_position_embeddings=2048)

needs_libtpu = pytest.mark.skipif(not libtpu.installed(), reason="libtpu (the tpu extra) is not installed")


@pytest.fixture(scope="module")
def report():
  # Inference replicas of 2 devices (4 per host of 8), training FSDP over all 8. Attention: the einsum
  # reference, whose FLOPs the compiler counts (a Pallas kernel's it cannot see); splash has its own test.
  return preflight(TINY, ["mesh.tensor=2", "model.attention=xla", "curate.compare=('generate', 'digits', 'likelihood')"],
                   "v5e-8", model=MODEL)


def test_slice_names_map_to_topologies():
  assert topology.parse("v4-32")[:2] == ("tpu", "v4:2x2x4")  # 32 TensorCores = 16 chips
  assert topology.parse("v4-8")[3] is True  # megacore: one device per chip
  assert topology.parse("v5p-16")[1] == "v5p:2x2x2"
  assert topology.parse("v5e-256")[1] == "v5e:16x16"  # v5e counts chips
  assert topology.parse("v4:2x2x2")[1] == "v4:2x2x2"  # the raw form as is
  assert topology.parse("cpu-8")[0] == "cpu"
  with pytest.raises(ConfigError, match="v4-N counts TensorCores.*v4-32"):
    topology.parse("v4-24")
  with pytest.raises(ConfigError, match="expected a TPU slice"):
    topology.parse("h100-8")


@needs_libtpu
def test_every_stage_compiles_for_the_slice(report):
  assert report.target.describe()["devices"] == 8 and report.target.hosts == 1
  assert report.chip_hbm_bytes == pytest.approx(15.75 * 2**30)  # v5e: the compiler's own limit
  stages = {m.stage for m in report.programs}
  # configs/tiny.py curates with `generate` (its fallback reads the digits after the reasoning); the fixture
  # compares `digits` and `likelihood` too.
  assert stages == {"backward", "augment", "seed", "train_1", "train_2", "no_curation", "evaluate"} | {
    f"curate_{t}{m}" for t in (1, 2) for m in ("", " fallback", " digits", " likelihood")}
  names = {(m.stage, m.program) for m in report.programs}
  for program in ("prefill_prefix", "init_state", "refill", "decode", "compact"):
    assert ("curate_1", program) in names  # the rubric is a shared prefix
  assert ("augment", "refill") in names and ("curate_1 digits", "next_token_logprobs") in names
  fallback = next(m for m in report.programs if m.stage == "curate_1 fallback" and m.program == "next_token_logprobs")
  digits = next(m for m in report.programs if m.stage == "curate_1 digits" and m.program == "next_token_logprobs")
  def tokens(m):
    return int(m.shape.split(" rows x ")[1].split(" ")[0])
  assert tokens(fallback) >= tokens(digits)  # its rows add the reasoning (here within the same length bucket)
  assert ("curate_1 likelihood", "loglikelihood") in names and ("seed", "train_step") in names
  for m in report.programs:
    assert m.hbm is not None and m.fits, (m.stage, m.program)
    assert m.devices == 8, (m.stage, m.program)  # training: FSDP over 8; inference: 4 replicas x 2 on the host
    assert m.program == "train_step" or "rows" in m.shape or "tokens" in m.shape
  assert [m.same_as for m in report.programs if m.stage == "curate_2"] == ["curate_1"] * 5
  d = report.to_dict()
  json.dumps(d)
  row = next(p for p in d["programs"] if p["program"] == "train_step")
  assert set(row["hbm_bytes"]) >= {"arguments", "outputs", "temporaries", "code", "total"}
  assert {"estimate_hbm_bytes", "flops", "bytes_accessed", "estimate_flops", "compile_s", "fits"} <= set(row)
  assert "| curate_1, curate_2 | refill | 8 |" in format_markdown(d)
  assert "curate_1 refill: 16 rows" in format_text(report)
  # Restoring a model folder: one row per layout, the stages that restore onto it named.
  train, serve = report.restores
  assert train.stage == "backward, seed, train_1, train_2, no_curation" and train.layout == "train"
  assert train.bytes["total"] == 3 * train.bytes["stored_params"]  # fp32 folder: params + AdamW's two moments
  assert serve.stage == "augment, curate_1, curate_2, evaluate" and serve.fits


@needs_libtpu
def test_argument_bytes_are_the_sharded_sizes(report):
  for m in report.programs:
    if m.same_as or not m.groups:
      continue
    # The groups, summed from the compiled layouts, are the compiler's argument bytes; with 128-multiples no tile
    # pads the parameters or the optimizer state.
    assert sum(g["compiled"] for g in m.groups.values()) == m.hbm["arguments"], (m.stage, m.program)
  serve = next(m for m in report.programs if m.stage == "augment" and m.program == "refill")
  tensor2 = est_memory.param_bytes_per_device(MODEL, {"data": 4, "fsdp": 1, "tensor": 2}, SERVE_RULES, 4.0)
  norms = (2 * MODEL.num_layers + 1) * MODEL.hidden_size * 4
  assert tensor2 == (MODEL.num_params * 4 - norms) / 2 + norms
  assert serve.groups["params"] == {"compiled": tensor2, "unpadded": tensor2}
  train = next(m for m in report.programs if m.stage == "seed")
  fp32 = est_memory.param_bytes_per_device(MODEL, {"data": 1, "fsdp": 8, "tensor": 1}, TRAIN_RULES, 4.0)
  scalars = 4 + 8 + 4 + 4  # step, rng key, AdamW's and the schedule's counts
  assert train.groups["state"]["unpadded"] == 3 * fp32 + scalars  # params, mu, nu
  assert train.groups["state"]["compiled"] == 3 * fp32 + 4 * 512  # each scalar fills one (128,) tile of int32
  assert train.estimate["arguments"] == 3 * fp32 + train.groups["inputs"]["unpadded"]


@needs_libtpu
def test_train_step_flops_match_the_estimate(report):
  # The estimate counts matmuls and attention (hb_jax.preflight.programs.executed_train_flops); the compiler also
  # counts RMSNorm, softmax, RoPE, SiLU, the loss and AdamW's elementwise work: ~2% at width 256, less at 7B.
  # Without the layer loop's trip count the compiler's figure would be about half (2 layers): well outside.
  for m in report.programs:
    if m.program == "train_step":
      assert 0.99 <= m.flops / m.estimate_flops <= 1.06, (m.stage, m.flops, m.estimate_flops)
      assert m.flops > 1.8 * m.xla_flops  # XLA's own figure counts each loop body once
      assert any("x2" in n for n in m.notes)


@needs_libtpu
def test_splash_compiles_for_the_slice_and_keeps_no_score_matrix(report):
  """`auto` on a TPU slice trains with the splash kernel (per device, in shard_map), and the report says its
  FLOPs are not in the compiler's count. (At 384 tokens its temporaries are no smaller than the einsum's; the
  7B comparison at 2,048 and 8,192 tokens is in docs/attention.md.)"""
  splash = preflight(TINY, ["mesh.tensor=2"], "v5e-8", model=MODEL, stages=["seed"])
  assert "attention: auto (--config.model.attention)" in splash.notes
  (got,) = splash.programs
  want = next(m for m in report.programs if m.stage == "seed")
  assert got.program == want.program == "train_step" and got.fits and got.devices == 8
  assert any("Pallas kernel call(s)" in n for n in got.notes), got.notes
  assert not any("Pallas" in n for n in want.notes) and got.flops < want.flops


@needs_libtpu
def test_a_program_too_large_is_refused_naming_it(capsys):
  # 32k-token rows: the attention scores of one layer alone are 2 heads x 32k x 32k floats per row.
  code = cli.main(["--config", TINY, "--config.train.seq_len=32768", "--config.train.rows_per_micro_batch=4",
                   "--config.model.attention=xla",
                   "--topology=v5e-4", "--stages=seed", "--json"])
  out, err = capsys.readouterr()
  assert code == 1
  row = json.loads(out)["programs"][0]
  assert row["stage"] == "seed" and row["program"] == "train_step" and not row["fits"]
  needed = row["needed_bytes"] or row["hbm_bytes"]["total"]
  assert needed > 15.75 * 2**30
  assert f"error: seed train_step does not fit: it needs {needed:,.0f} bytes" in err
  assert "has 16,911,433,728 (16.91 GB)" in err


def test_cpu_topology_without_libtpu_and_the_missing_extra():
  script = (
      "import sys; sys.modules['libtpu'] = None\n"  # as if the tpu extra were not installed
      "from hb_jax.preflight.cli import main\n"
      f"code = main(['--config', {TINY!r}, '--topology=cpu-8', '--stages=backward,augment', '--json'])\n"
      "print('CODE', code)\n"
      f"print('CODE', main(['--config', {TINY!r}, '--topology=v5e-4']))\n")
  # libtpu's import records its path in TPU_LIBRARY_PATH, where jax would find it too.
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS", "TPU_LIBRARY_PATH")}
  res = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  lines = res.stdout.splitlines()
  assert lines[-2:] == ["CODE 0", "CODE 1"], res.stdout + res.stderr
  out = json.loads(lines[0])
  assert out["topology"]["platform"] == "cpu" and out["topology"]["devices"] == 8 and out["chip_hbm_bytes"] is None
  assert any("XLA:CPU" in n and "float32" in n for n in out["notes"])
  assert {p["stage"] for p in out["programs"]} == {"backward", "augment"}
  assert all(p["hbm_bytes"]["total"] > 0 for p in out["programs"])
  assert res.stderr.strip().splitlines() == [
      "error: compiling for a TPU topology needs libtpu: pip install 'hb_jax[tpu]' (or `pip install -c "
      "constraints.txt 'jax[tpu]'`), or use --topology=cpu-N"]


@needs_libtpu
def test_libtpu_stays_quiet():
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
  script = ("import hb_jax, jax; print(jax.devices()[0].platform)\n"
            "from hb_jax.preflight import topology; print(len(topology.target('v4-8').devices))\n")
  res = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert res.stdout.split() == ["cpu", "4"] and res.stderr == ""


def test_the_launcher_runs_it_too():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  res = subprocess.run([sys.executable, "launch/run.py", "--preflight", f"--config={TINY}", "--config.train.seq_len=64",
                        "--topology=cpu-2", "--stages=seed", "--json"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  out = json.loads(res.stdout)
  assert [(p["stage"], p["program"], p["devices"]) for p in out["programs"]] == [("seed", "train_step", 2)]
  assert "64 tokens" in out["programs"][0]["shape"]
