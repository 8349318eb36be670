"""The cost model (hb_jax/estimate/) and the launch configs it reads (configs/llama*.py): FLOPs agree with
the trainer's formula, the decode roofline and each program's cost with a hand computation, the chip table
names the accelerators JAX reports (training's MFU reads it), every config variant validates as launch/run.py
would, its meshes divide the model as the sharding rules require, and it fits in memory."""
from __future__ import annotations

import importlib.util
import json
import math
import os

import jax
import pytest

from hb_jax import estimate as est
from hb_jax.cli import estimate_main
from hb_jax.config import ConfigError, ModelConfig
from hb_jax.model.presets import preset
from hb_jax.parallel import SERVE_RULES, TRAIN_RULES, undivided_params
from hb_jax.pipeline import runner
from hb_jax.pipeline.config import from_config_dict
from hb_jax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ("llama7b", "llama33b", "llama65b", "llama2_70b")


def _module(name):
  spec = importlib.util.spec_from_file_location(f"test_cfg_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


VARIANTS = [(name, hw) for name in PAPER_CONFIGS for hw in sorted(_module(name).LAYOUTS)]


def _config(name, hw=None):
  return est.load_config(os.path.join(REPO, "configs", f"{name}.py") + (f":{hw}" if hw else ""))


def test_training_flops_are_the_trainers():
  loaded = _config("llama7b", "h100")
  result = est.estimate(loaded.pipeline, loaded.model, est.HARDWARE["h100"], 8)
  backward = next(s for s in result.stages if s.stage == "backward")
  length = result.derived["seed_backward_example_tokens"]
  examples = 500 * 32  # the paper's steps for 3,200 examples, 32 examples per step
  want = metrics.train_flops(preset("llama-7b"), examples * length, examples * length * (length + 1) / 2)
  assert backward.flops == pytest.approx(want, rel=1e-12)
  # train_1: seed + the paper's A5 (41,821) -> 1,200 steps of 32.
  train_1 = next(s for s in result.stages if s.stage == "train_1")
  assert "1200 steps x 32 examples" in train_1.work


def _tiny() -> ModelConfig:
  return ModelConfig(vocab_size=100, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=128)


def test_decode_roofline_by_hand():
  m = _tiny()
  # per layer 64*4*16*2 + 64*2*16*2 + 3*64*128 + 2*64 = 36,992; x2 layers + final norm 64 + head 6,400
  assert m.params_per_layer == 36_992
  assert m.num_params_no_embedding == 80_448
  a = est.Assumptions(bucket_factor=1.0, slot_utilisation=1.0, decode_efficiency=1.0, mfu=1.0)
  slow_memory = est.Hardware("x", "x", peak_flops=1e12, hbm_bandwidth=1e9, memory=1e12, chips_per_host=1,
                             source="test")
  cfg = from_config_dict({"name": "t", "mesh": {"data": -1, "fsdp": 1, "tensor": 1}})
  e = est._Estimator(cfg, m, slow_memory, 1, a)
  s = e.generate("g", n=8, prompt=10, prompt_max=10, new=5, max_new=6, batch_per_process=4)
  # slots 10 + 6 = 16; KV per token 2 (K,V) x 2 layers x 2 heads x 16 x 2 bytes = 256 bytes.
  step_bytes = 80_448 * 2 + 4 * 16 * 256  # 177,280
  step_flops = 4 * (2 * 80_448 + 4 * 2 * 4 * 16 * 16)  # 676,352: 2N + attention over every slot, per row
  steps = 8 * 5 / 4
  assert s.bound == "memory"
  assert s.decode_roofline_chip_hours * 3600 == pytest.approx(steps * step_bytes / 1e9, rel=1e-12)
  prefill_flops = 8 * (2 * 80_448 * 10 + 4 * 2 * 4 * 16 * 10 * 16)  # 10 prompt tokens attend to 16 slots
  assert s.flops == pytest.approx(steps * step_flops + prefill_flops, rel=1e-12)
  assert s.roofline_chip_hours * 3600 == pytest.approx(steps * step_bytes / 1e9 + prefill_flops / 1e12, rel=1e-12)
  # A 100-token shared prefix (padded to 128 slots) is read once per step and attended by every row.
  s = e.generate("g", n=8, prompt=10, prompt_max=10, new=5, max_new=6, batch_per_process=4, prefix=100)
  assert s.decode_roofline_chip_hours * 3600 == pytest.approx(steps * (step_bytes + 128 * 256) / 1e9, rel=1e-12)
  assert s.flops == pytest.approx(steps * (step_flops + 4 * 4 * 2 * 4 * 16 * 128)
                                  + 8 * (2 * 80_448 * 10 + 4 * 2 * 4 * 16 * 10 * (128 + 16)), rel=1e-12)
  # The same step on a chip with little compute is compute-bound: max(), not a sum.
  slow_compute = est.Hardware("y", "y", peak_flops=1e6, hbm_bandwidth=1e12, memory=1e12, chips_per_host=1,
                              source="test")
  s = est._Estimator(cfg, m, slow_compute, 1, a).generate("g", 8, 10, 10, 5, 6, 4)
  assert s.bound == "compute"
  assert s.decode_roofline_chip_hours * 3600 == pytest.approx(steps * step_flops / 1e6, rel=1e-12)


def test_program_costs_by_hand():
  """The per-program figures a compiler's cost analysis is compared with, on the model of the test above."""
  m = _tiny()
  step = est.decode_step(m, rows=4, slots=16, weight_bytes=2.0, kv_bytes=2.0)
  assert step == est.ProgramCost(flops=676_352, bytes=177_280)
  assert step.per_device(2) == est.ProgramCost(flops=338_176, bytes=88_640)
  # A shared prefix of 128 slots: read once per step, attended by all 4 rows.
  assert est.decode_step(m, rows=4, slots=16, prefix_slots=128) == est.ProgramCost(
      676_352 + 4 * 4 * 2 * 4 * 16 * 128, 177_280 + 128 * 256)
  # Prefill: 3 prompts of 10 tokens into 16 slots each; the weights are read once per call.
  assert est.prefill(m, rows=3, prompt_len=10, slots=16) == est.ProgramCost(
      3 * (2 * 80_448 * 10 + 4 * 2 * 4 * 16 * 10 * 16), 80_448 * 2)
  assert est.forward(m, rows=3, length=10, keys=10, weight_bytes=4.0) == est.ProgramCost(
      3 * (2 * 80_448 * 10 + 4 * 2 * 4 * 16 * 10 * 10), 80_448 * 4)
  # Training: the trainer's FLOPs; AdamW's 28 bytes per parameter + 3 passes x bf16 weights per chip and micro-batch.
  train = est.train_step(m, tokens=64, attention_pairs=64 * 65 / 2, micro_batches=2, chips=4, tensor=2)
  assert train.flops == metrics.train_flops(m, 64, 64 * 65 / 2)
  assert train.bytes == 28 * m.num_params + 2 * 3 * 2 * m.num_params * 4 / 2


@pytest.mark.parametrize("kind,chip", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA L4", "l4"), ("TPU v4", "tpu-v4"), ("TPU v5 lite", "tpu-v5e"), ("TPU v5e", "tpu-v5e"),
    ("TPU v5p", "tpu-v5p"), ("TPU v6 lite", "tpu-v6e"), ("NVIDIA L40S", None), ("cpu", None)])
def test_device_kinds_find_their_chip(kind, chip):
  """Training's MFU takes its peak from the cost model's table, by JAX's device_kind (L4 is not L40S)."""
  found = est.for_device_kind(kind)
  assert (found.name if found else None) == chip


def test_every_device_kind_names_one_chip():
  for chip in est.HARDWARE.values():
    assert chip.device_kinds, chip.name
    for kind in chip.device_kinds:
      assert est.for_device_kind(kind) is chip


def test_mfu_peak_reads_the_table():
  assert metrics.peak_flops_per_device(123.0) == 123.0
  chip = est.for_device_kind(jax.devices()[0].device_kind)
  assert metrics.peak_flops_per_device() == (chip.peak_flops if chip else 0.0)


@pytest.mark.parametrize("name,hw", VARIANTS, ids=lambda v: str(v))
def test_every_paper_config_estimates(name, hw):
  loaded = _config(name, hw)
  layout = _module(name).LAYOUTS[hw]
  result = est.estimate(loaded.pipeline, loaded.model, est.HARDWARE[hw], layout.chips)
  planned = {s.name for s in runner.plan(loaded.pipeline)} - {"prepare", "report"}
  assert {s.stage.split()[0] for s in result.stages} == planned
  assert all(s.flops > 0 and s.bytes > 0 and s.chip_hours > 0 for s in result.stages)
  assert result.total("wall_hours") == pytest.approx(sum(s.wall_hours for s in result.stages))
  for s in result.stages:
    serving = s.kind == "generate"
    if serving and not layout.serves:
      assert not s.memory_fits  # documented: the replica does not fit in one host
    else:
      assert s.memory_fits, (s.stage, s.memory_per_device / 1e9)
  json.dumps(result.to_dict())


@pytest.mark.parametrize("name,hw", VARIANTS, ids=lambda v: str(v))
def test_launch_configs_validate_and_divide_the_model(name, hw):
  mod = _module(name)
  layout = mod.LAYOUTS[hw]
  cfg = from_config_dict({**mod.get_config(hw).to_dict(), "name": name})  # what launch/run.py does
  model = preset(mod.MODEL_PRESET)
  chip = est.HARDWARE[layout.hardware]
  processes = layout.chips // chip.chips_per_host
  data, fsdp, tensor = cfg.train.mesh.resolve(layout.chips)
  assert undivided_params(model, {"data": data, "fsdp": fsdp, "tensor": tensor}, TRAIN_RULES) == []
  assert 32 % (processes * cfg.train.micro_batches) == 0  # hb_jax.data.loader.plan_batches
  assert cfg.backward.micro_batches == cfg.train.micro_batches
  s_data, s_fsdp, s_tensor = cfg.mesh.resolve(chip.chips_per_host)  # one process's devices
  assert undivided_params(model, {"data": s_data, "fsdp": s_fsdp, "tensor": s_tensor}, SERVE_RULES) == []
  for batch in (cfg.augment.batch, cfg.curate.batch, cfg.evaluate.batch):
    assert batch & (batch - 1) == 0


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_hardware_variants_differ_only_in_layout_fields(name):
  """docs/launch.md runs training stages on one variant and sampling stages on another in one workdir; a lone
  stage accepts its upstream stages only if the variants differ in runner.LAYOUT_FIELDS alone."""
  from hb_jax.pipeline import runner
  from hb_jax.pipeline.manifest import diff_keys

  mod = _module(name)
  cfgs = {hw: from_config_dict({**mod.get_config(hw).to_dict(), "name": name}) for hw in sorted(mod.LAYOUTS)}
  first, *others = cfgs
  for other in others:
    for stage in runner.plan(cfgs[first]):
      a, b = (runner._config_subset(cfgs[hw], stage.keys, stage.ignore) for hw in (first, other))
      # The runner's rule: a key with a LAYOUT_FIELDS component (train.mesh.tensor, augment.batch) may differ.
      changed = [k for k in diff_keys(a, b) if not runner.LAYOUT_FIELDS.intersection(k.split("."))]
      assert not changed, (first, other, stage.name, changed)


def test_undivided_params_names_the_dimension():
  # 33B has 52 heads: tensor=8 cannot split them (hb_jax.parallel refuses the layout).
  problems = undivided_params(preset("llama-33b"), {"data": 1, "fsdp": 2, "tensor": 8}, TRAIN_RULES)
  assert any("q_proj" in p and "(52) not divisible by tensor=8" in p for p in problems)


def test_memory_arithmetic_by_hand():
  m = preset("llama-65b")
  mem = est.train_memory(m, fsdp=4, tensor=8, rows_per_device=1, seq_len=2048, micro_batches=8)
  n = m.num_params
  norms = (2 * m.num_layers + 1) * m.hidden_size  # RMSNorm scales: whole on every device
  params = 4 * (n - norms) / 32 + 4 * norms
  assert mem["params_fp32"] == params and mem["adamw_fp32"] == 2 * params
  assert mem["grads_fp32"] == 2 * params  # gradient + accumulator with micro-batches
  assert mem["saved_activations"] == 2048 * 8192 * 2 * 80  # bf16 layer inputs under full remat
  serve = est.serve_memory(preset("llama2-70b"), tensor=8, batch=1, slots=1000, prompt_bucket=0)
  assert serve["kv_cache"] == 1000 * 2 * 80 * 8 * 128 * 2 / 8  # GQA: 8 KV heads, one per device


def test_cli_text_json_and_errors(capsys):
  assert estimate_main(["--config", os.path.join(REPO, "configs", "llama65b.py"), "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["hardware"]["name"] == "h100" and out["chips"] == 32 and out["model"] == "llama-65b"
  assert estimate_main(["--config", os.path.join(REPO, "configs", "llama7b.py:tpu-v5p"), "--chips", "16",
                        "--mfu", "0.5", "--assume", "segment_tokens=400"]) == 0
  text = capsys.readouterr().out
  assert "16 x Google Cloud TPU v5p" in text and "segment_tokens = 400" in text and "mfu = 0.5" in text
  assert estimate_main(["--config", os.path.join(REPO, "configs", "llama7b.py:tpu-v9")]) == 1
  assert "tpu-v9" in capsys.readouterr().err
  assert estimate_main(["--config", os.path.join(REPO, "configs", "llama7b.py"), "--assume", "nope=1"]) == 1
  assert "nope" in capsys.readouterr().err
  with pytest.raises(ConfigError, match="decode_efficiency"):
    est.Assumptions(decode_efficiency=0)
  assert not math.isnan(est.Assumptions().bucket_factor)
