"""The estimate as text: a table of stages, their notes, the assumptions and the warnings (`format_text`).
The JSON form is `Estimate.to_dict`."""
from __future__ import annotations

import dataclasses

from hb_jax.estimate.hardware import GB
from hb_jax.estimate.stages import Estimate


def _h(x: float) -> str:
  return f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


def _bytes(x: float) -> str:
  for p, s in ((1e18, "EB"), (1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB")):
    if x >= p:
      return f"{x / p:.2f} {s}"
  return f"{x:.0f} B"


def format_text(est: Estimate) -> str:
  hw, a = est.hardware, est.assumptions
  count = lambda n: f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
  lines = [f"hb_jax cost estimate: {est.config} ({est.model}, {count(est.params)} params, "
           f"{count(est.params_no_embedding)} without the input embedding) on {est.chips} x {hw.description}",
           f"  chip: {hw.peak_flops / 1e12:.0f} TFLOP/s bf16, {hw.hbm_bandwidth / 1e12:.2f} TB/s HBM, "
           f"{hw.memory / GB:.1f} GB ({hw.source})", ""]
  head = (f"{'stage':<22} {'FLOPs':>9} {'bytes':>10} {'chip-h':>9} {'wall-h':>8} {'roofline chip-h':>16} "
          f"{'mem/device':>10}")
  lines += [head, "-" * len(head)]
  for s in est.stages:
    mem = (f"{s.memory_per_device / GB:.0f} GB" + ("" if s.memory_fits else " (!)")) if s.memory_per_device else "-"
    lines.append(f"{s.stage:<22} {s.flops:>9.2e} {_bytes(s.bytes):>10} {_h(s.chip_hours):>9} "
                 f"{_h(s.wall_hours):>8} {_h(s.roofline_chip_hours):>16} {mem:>10}")
  lines.append("-" * len(head))
  lines.append(f"{'total':<22} {est.total('flops'):>9.2e} {_bytes(est.total('bytes')):>10} "
               f"{_h(est.total('chip_hours')):>9} {_h(est.total('wall_hours')):>8} "
               f"{_h(est.total('roofline_chip_hours')):>16}")
  gen = ("generate", "score")
  lines.append(f"{'  generation+curation':<22} {'':>9} {'':>10} {_h(est.total('chip_hours', gen)):>9} "
               f"{_h(est.total('wall_hours', gen)):>8} {_h(est.total('roofline_chip_hours', gen)):>16}")
  lines += ["", "stages:"]
  for s in est.stages:
    lines.append(f"  {s.stage}: {s.work}" + (f" [{s.bound}-bound decode]" if s.bound else ""))
    lines += [f"      {n}" for n in s.notes]
  lines += ["", "assumptions (override with --assume NAME=VALUE):"]
  for f in dataclasses.fields(a):
    lines.append(f"  {f.name} = {getattr(a, f.name):g}" if isinstance(getattr(a, f.name), float)
                 else f"  {f.name} = {getattr(a, f.name)}")
  lines.append("derived: " + ", ".join(f"{k} {v:,.0f}" for k, v in est.derived.items()))
  lines.append("hours: chip-h = chip-seconds / 3600 at the efficiencies above; wall-h = chip-h / chips used "
               "(bulk stages split records evenly over processes); roofline = 100% of peak FLOP/s or HBM "
               "bandwidth, every decode slot busy.")
  if est.warnings:
    lines += ["", "warnings:"] + [f"  {w}" for w in est.warnings]
  return "\n".join(lines)
