"""A preflight Report as text (`format_text`) and as JSON (`to_dict`).

JSON: {"config", "model", "topology": {...}, "chip_hbm_bytes", "fits", "notes", "programs": [{"stage",
"program", "devices", "shape", "hbm_bytes": {"arguments", "outputs", "aliased", "temporaries", "code", "total"},
"argument_groups", "needed_bytes", "estimate_hbm_bytes", "estimate_breakdown", "flops", "bytes_accessed",
"xla_flops", "estimate_flops", "compile_s", "fits", "same_as", "notes"}], "restore": [...]}. Byte figures are
per device; FLOPs and bytes accessed per device per call (per decode step for `decode`). `hbm_bytes` is null for
a program the compiler refused for memory (`needed_bytes` says what it asked for).
"""
from __future__ import annotations

from typing import Any

GB = 1e9


def to_dict(report) -> dict[str, Any]:
  return {
      "config": report.config, "model": report.model, "topology": report.target.describe(),
      "chip_hbm_bytes": report.chip_hbm_bytes, "fits": not report.misfits, "notes": report.notes,
      "programs": [{
          "stage": m.stage, "program": m.program, "devices": m.devices, "shape": m.shape,
          "hbm_bytes": m.hbm, "argument_groups": m.groups, "needed_bytes": m.needed_bytes,
          "estimate_hbm_bytes": m.estimate.get("total"),
          "estimate_breakdown": {k: v for k, v in m.estimate.items() if k != "total"},
          "flops": m.flops, "bytes_accessed": m.bytes_accessed, "xla_flops": m.xla_flops,
          "estimate_flops": m.estimate_flops, "compile_s": round(m.compile_s, 2), "fits": m.fits,
          "same_as": m.same_as, "notes": m.notes} for m in report.programs],
      "restore": [{"stage": r.stage, "layout": r.layout, "devices": r.devices, "bytes": r.bytes, "fits": r.fits}
                  for r in report.restores],
  }


def _gb(x: float | None) -> str:
  return "-" if x is None else f"{x / GB:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
  return "-" if not a or not b else f"{a / b:.2f}"


def format_text(report) -> str:
  t = report.target
  hbm = f"{report.chip_hbm_bytes / GB:.2f} GB per device (the compiler's limit)" if report.chip_hbm_bytes else \
      "no HBM limit (XLA:CPU)"
  lines = [f"hb_jax preflight: {report.config} ({report.model}) on {t.name}: {len(t.devices)} x {t.device_kind}"
           + (f" ({t.topology}, megacore)" if t.megacore else f" ({t.topology})" if t.topology else "")
           + f", {t.hosts} host(s) of {len(t.local_devices)}; {hbm}"]
  lines += [f"  {n}" for n in report.notes]
  lines.append("")
  head = (f"{'stage':<20} {'program':<20} {'dev':>3} {'args':>7} {'out':>7} {'alias':>7} {'temp':>7} {'code':>6} "
          f"{'total':>7} {'est':>7} {'x':>5} {'fits':>4} {'GFLOP':>9} {'est':>9} {'x':>5} {'GB acc':>7} {'s':>5}")
  lines += ["HBM per device in GB (1e9 bytes); FLOPs and bytes accessed per device per call (decode: per step); "
            "x = compiler / estimate", head, "-" * len(head)]
  for m in report.programs:
    h = m.hbm or {}
    total = m.total_bytes
    fits = "yes" if m.fits else "NO"
    if report.chip_hbm_bytes is None:
      fits = "-"
    gflop = "-" if m.flops is None else f"{m.flops / 1e9:.1f}"
    est_gflop = "-" if m.estimate_flops is None else f"{m.estimate_flops / 1e9:.1f}"
    lines.append(
        f"{m.stage:<20} {m.program:<20} {m.devices:>3} {_gb(h.get('arguments')):>7} {_gb(h.get('outputs')):>7} "
        f"{_gb(h.get('aliased')):>7} {_gb(h.get('temporaries')):>7} {_gb(h.get('code')):>6} {_gb(total):>7} "
        f"{_gb(m.estimate.get('total')):>7} {_ratio(total, m.estimate.get('total')):>5} {fits:>4} {gflop:>9} "
        f"{est_gflop:>9} {_ratio(m.flops, m.estimate_flops):>5} {_gb(m.bytes_accessed):>7} "
        f"{('=' + m.same_as) if m.same_as else f'{m.compile_s:.1f}':>5}")
  lines += ["", "programs:"]
  for m in report.programs:
    if m.same_as:
      continue
    lines.append(f"  {m.stage} {m.program}: {m.shape}")
    if m.groups:
      lines.append("      arguments: " + ", ".join(
          f"{g} {v['compiled'] / GB:.3f} GB" + (f" ({v['unpadded'] / GB:.3f} unpadded)"
                                                 if v["compiled"] != v["unpadded"] else "")
          for g, v in m.groups.items()) + f"; estimate {m.estimate['arguments'] / GB:.3f}")
    lines += [f"      {n}" for n in m.notes]
  if report.restores:
    lines += ["", "restoring a model folder onto the mesh (analytic, from the shard shapes; per device):"]
    for r in report.restores:
      parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in r.bytes.items() if k != "total" and v)
      lines.append(f"  {r.stage} ({r.layout} layout, {r.devices} devices): {parts}; peak {r.bytes['total'] / GB:.2f} GB"
                   + ("" if r.fits else " (does not fit)"))
  misfits = report.misfits
  if misfits:
    lines += ["", "does not fit:"] + [f"  {misfit_line(m, report.chip_hbm_bytes)}" for m in misfits]
  return "\n".join(lines)


def misfit_line(m, limit: float | None) -> str:
  return (f"{m.stage} {m.program} needs {m.total_bytes / GB:.2f} GB per device ({m.total_bytes:,.0f} bytes); "
          f"the device has {limit / GB:.2f} GB ({limit:,.0f} bytes)")


def format_markdown(d: dict[str, Any]) -> str:
  """The per-program table of a report's JSON (`to_dict`) as Markdown: docs/launch.md's tables."""
  t = d["topology"]
  limit = d["chip_hbm_bytes"]
  lines = [f"`{d['config']}` on {t['name']} ({t['devices']} x {t['device_kind']}"
           + (", megacore" if t.get("megacore") else "") + f", {t['hosts']} host(s))"
           + (f": {limit / GB:.2f} GB per device" if limit else ""), "",
           "| stage | program | devices | arguments | outputs (aliased) | temporaries | total | estimate | x | fits "
           "| TFLOP | estimate | compile s |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|:-:|--:|--:|--:|"]
  for p in d["programs"]:
    if p["same_as"]:
      continue
    h = p["hbm_bytes"] or {}
    total = h.get("total") or p["needed_bytes"]
    est = p["estimate_hbm_bytes"]
    out = f"{_gb(h.get('outputs'))} ({_gb(h.get('aliased'))})" if h else "-"
    tflop = "-" if p["flops"] is None else f"{p['flops'] / 1e12:.2f}"
    est_tflop = "-" if p["estimate_flops"] is None else f"{p['estimate_flops'] / 1e12:.2f}"
    stages = ", ".join([p["stage"]] + [q["stage"] for q in d["programs"]
                                       if q["same_as"] == p["stage"] and q["program"] == p["program"]])
    lines.append(f"| {stages} | {p['program']} | {p['devices']} | {_gb(h.get('arguments'))} | {out} | "
                 f"{_gb(h.get('temporaries'))} | {_gb(total)} | {_gb(est)} | {_ratio(total, est)} | "
                 f"{'yes' if p['fits'] else '**no**'} | {tflop} | {est_tflop} | {p['compile_s']:.0f} |")
  for r in d["restore"]:
    lines.append(f"| {r['stage']} | restore ({r['layout']}) | {r['devices']} | | | | {_gb(r['bytes']['total'])} | "
                 f"{_gb(r['bytes']['total'])} | analytic | {'yes' if r['fits'] else '**no**'} | | | |")
  return "\n".join(lines)
