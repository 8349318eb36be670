"""FLOPs and bytes of a compiled program with every loop body counted as many times as the loop runs.

XLA's cost analysis (`compiled.cost_analysis()`) counts a while loop's body once, so a train step whose 32
layers run in a `lax.scan` reports about one layer's FLOPs. Here the compiled module's text is split into its
computations; each while loop's trip count is read from its condition (`i < N` on a counter the loop starts at
a constant and steps by a constant: what `lax.scan` and `fori_loop` emit, and XLA's windowed einsums; or
XLA's own `known_trip_count`); each body is costed by the
same XLA cost analysis, run on that computation alone; and the program's cost is

    cost(C) = xla(C) + sum over the loops W that C runs (directly or through calls)
                       of trips(W) x cost(body(W)) - xla(body(W))

(xla(C) already counts each body once, its inner loops once). A loop whose trip count is decided at run time
(the sampler's decode loop, which stops when rows finish), or whose counter steps in a way not read here, is
counted once, and named in `once`: the program's
figure is then per iteration of that loop. Pallas kernels (`tpu_custom_call`) carry no cost in XLA's analysis;
they are counted in `kernels` so a report can add them analytically.
"""
from __future__ import annotations

import dataclasses
import functools
import re

_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_WHILE = re.compile(r"\bwhile\(%([\w.\-]+)\), condition=%([\w.\-]+), body=%([\w.\-]+)")
_CALLED = re.compile(r"(?:calls|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONSTANT = re.compile(r"^\S+ constant\((-?\d+)\)")
_COMPARE = re.compile(r"^\S+ compare\(%([\w.\-]+), %([\w.\-]+)\), direction=(LT|GT)")
_GTE = re.compile(r"^\S+ get-tuple-element\(%([\w.\-]+)\), index=(\d+)")
_ADD = re.compile(r"^\S+ add\(%([\w.\-]+), %([\w.\-]+)\)")
_VIA = re.compile(r"^\S+ (?:copy|bitcast|convert)\(%([\w.\-]+)\)")
_STACK_FRAME = re.compile(r" stack_frame_id=\d+")
_TUPLE = re.compile(r"^\(.*\) tuple\((.*)\)")


@dataclasses.dataclass
class Loop:
  body: str
  trips: int | None  # None: decided at run time (counted once)
  op_name: str  # the jax op it came from (metadata), e.g. jit(train_step)/jvp()/while


@dataclasses.dataclass
class Cost:
  flops: float
  bytes_accessed: float
  xla_flops: float  # XLA's own figure: every loop body once
  xla_bytes_accessed: float
  loops: list[Loop]
  kernels: int  # Pallas kernels (tpu_custom_call): no cost in XLA's analysis

  @property
  def once(self) -> list[Loop]:
    return [l for l in self.loops if l.trips is None]


@dataclasses.dataclass
class _Computation:
  name: str
  header: str
  lines: list[str]
  instrs: dict[str, str]  # instruction name -> its right-hand side


def _split(text: str) -> tuple[str, list[_Computation], str]:
  """(module header line, computations in order, entry name)."""
  lines = text.splitlines()
  header, comps, entry, cur = lines[0], [], "", None
  for line in lines[1:]:
    if cur is None:
      m = _HEADER.match(line)
      if m:
        cur = _Computation(m.group(2), line, [line], {})
        if m.group(1):
          entry = cur.name
      continue
    cur.lines.append(line)
    # A computation ends at a line of its own "}": a Pallas kernel's custom call carries a string attribute
    # with newlines in it, so a line of that instruction may start with "}}, metadata=...".
    if line.rstrip() == "}":
      comps.append(cur)
      cur = None
      continue
    m = _INSTR.match(line)
    if m:
      cur.instrs[m.group(1)] = m.group(2)
  return header, comps, entry


class _Module:
  def __init__(self, text: str, client):
    self.header, comps, self.entry = _split(text)
    self.comps = {c.name: c for c in comps}
    self.order = [c.name for c in comps]
    self.client = client
    m = re.search(r"num_partitions=(\d+)", self.header)
    self.module_header = "HloModule preflight" + (f", num_partitions={m.group(1)}" if m else "")

  @functools.lru_cache(maxsize=None)
  def xla(self, name: str) -> tuple[float, float]:
    """XLA's (flops, bytes accessed) of computation `name` as a module's entry."""
    from jax._src.lib import _jax
    import jaxlib._hlo as hlo
    parts = [self.module_header, ""]
    for c in self.order:
      body = "\n".join(self.comps[c].lines)
      if body.startswith("ENTRY "):
        body = body[len("ENTRY "):]
      if c == name:
        body = "ENTRY " + body
      parts.append(body + "\n")
    # stack_frame_id points into a table the text does not carry; the parser warns about each one.
    module = hlo.hlo_module_from_text(_STACK_FRAME.sub("", "\n".join(parts)))
    cost = _jax.hlo_module_cost_analysis(self.client, module)
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))

  def loops_in(self, name: str, seen=None) -> list[tuple[str, str, str, str]]:
    """(parent computation, while instruction, condition, body) of the loops computation `name` runs,
    directly or through calls, not those inside another loop's body."""
    seen = set() if seen is None else seen
    if name in seen:
      return []
    seen.add(name)
    out = []
    for instr, rhs in self.comps[name].instrs.items():
      w = _WHILE.search(rhs)
      if w:
        out.append((name, instr, w.group(2), w.group(3)))
        continue
      called = _CALLED.findall(rhs)
      for b in _BRANCHES.findall(rhs):
        called += [x.strip().lstrip("%") for x in b.split(",") if x.strip()]
      for c in called:
        if c in self.comps:
          out += self.loops_in(c, seen)
    return out

  def trips(self, parent: str, instr: str, cond: str) -> int | None:
    rhs = self.comps[parent].instrs[instr]
    known = _TRIP.search(rhs)
    if known:
      return int(known.group(1))
    c = self.comps[cond].instrs
    root = next((l for l in self.comps[cond].lines if l.lstrip().startswith("ROOT ")), "")
    m = _INSTR.match(root)
    cmp = _COMPARE.match(m.group(2)) if m else None
    if not cmp:
      return None
    a, b, direction = cmp.groups()
    if direction == "GT":
      a, b = b, a
    limit, counter = _CONSTANT.match(c.get(b, "")), _GTE.match(c.get(a, ""))
    if not (limit and counter):
      return None
    index = int(counter.group(2))
    init = self._tuple_element(parent, _WHILE.search(rhs).group(1), index)
    start = self._constant(parent, init) if init else None
    step = self._step(_WHILE.search(rhs).group(3), index)
    if not start or not step:
      return None
    return max(0, -(-(int(limit.group(1)) - int(start.group(1))) // step))

  def _step(self, body: str, index: int) -> int | None:
    """How much the loop body adds to its counter (tuple element `index`): add(gte(param, index), constant)."""
    root = next((l for l in self.comps[body].lines if l.lstrip().startswith("ROOT ")), "")
    m = _INSTR.match(root)
    t = _TUPLE.match(m.group(2)) if m else None
    if not t:
      return None
    operands = re.findall(r"%([\w.\-]+)", t.group(1))
    if index >= len(operands):
      return None
    add = _ADD.match(self.comps[body].instrs.get(operands[index], ""))
    if not add:
      return None
    a, b = (self._through(body, x) for x in add.groups())
    instrs = self.comps[body].instrs
    counter, const = (a, b) if _GTE.match(instrs.get(a, "")) else (b, a)
    g, c = _GTE.match(instrs.get(counter, "")), self._constant(body, const)
    if not (g and c and int(g.group(2)) == index):
      return None
    return int(c.group(1)) if int(c.group(1)) > 0 else None

  def _through(self, comp: str, name: str) -> str:
    """The instruction `name` copies (through copies, bitcasts and converts)."""
    for _ in range(8):
      via = _VIA.match(self.comps[comp].instrs.get(name, ""))
      if not via:
        return name
      name = via.group(1)
    return name

  def _constant(self, comp: str, name: str):
    """The constant `name` is, through copies and bitcasts, as a _CONSTANT match (or None)."""
    for _ in range(8):
      rhs = self.comps[comp].instrs.get(name, "")
      m = _CONSTANT.match(rhs) or None
      if m:
        return m
      via = _VIA.match(rhs)
      if not via:
        return None
      name = via.group(1)
    return None

  def _tuple_element(self, comp: str, tuple_name: str, index: int) -> str | None:
    t = _TUPLE.match(self.comps[comp].instrs.get(tuple_name, ""))
    if not t:
      return None
    operands = re.findall(r"%([\w.\-]+)", t.group(1))
    return operands[index] if index < len(operands) else None

  def cost(self, name: str, loops: list[Loop]) -> tuple[float, float]:
    flops, bytes_ = self.xla(name)
    for parent, instr, cond, body in self.loops_in(name):
      n = self.trips(parent, instr, cond)
      op = re.search(r'op_name="([^"]*)"', self.comps[parent].instrs[instr])
      loops.append(Loop(body, n, op.group(1) if op else instr))
      inner_f, inner_b = self.cost(body, loops)
      once_f, once_b = self.xla(body)
      reps = 1 if n is None else n
      flops += reps * inner_f - once_f
      bytes_ += reps * inner_b - once_b
    return flops, bytes_


def program_cost(hlo_text: str, entry: dict | None = None) -> Cost:
  """The loop-aware cost of a compiled program (`compiled.as_text()`). `entry`: the compiler's own
  `cost_analysis()` of the whole program, used for the part outside loop bodies' repeats (the TPU compiler
  counts a few bytes differently from the generic analysis that costs the bodies)."""
  import jax
  client = jax.local_devices(backend="cpu")[0].client
  module = _Module(hlo_text, client)
  loops: list[Loop] = []
  flops, bytes_ = module.cost(module.entry, loops)
  xla_flops, xla_bytes = module.xla(module.entry)
  if entry:
    base_f, base_b = float(entry.get("flops", xla_flops)), float(entry.get("bytes accessed", xla_bytes))
    flops, bytes_ = base_f + flops - xla_flops, base_b + bytes_ - xla_bytes
    xla_flops, xla_bytes = base_f, base_b
  kernels = hlo_text.count('custom_call_target="tpu_custom_call"')
  return Cost(flops, bytes_, xla_flops, xla_bytes, loops, kernels)


_ARRAY = re.compile(r"^(pred|[sufc]\d+|bf16)\[([\d,]*)\]\S* ([\w\-]+)\(")
_BYTES = {"pred": 1, "bf16": 2}
_NOT_BUFFERS = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call", "conditional",
                "after-all", "partition-id", "replica-id", "iota")


def largest_writes(hlo_text: str, n: int = 3) -> list[tuple[float, str]]:
  """The `n` largest kinds of array a compiled program writes, by bytes per device summed over the instructions
  of a kind: [(bytes, 'copy bf16[128,8,1280,128] x64 (decode/while/body)')]. Buffers of the entry computation and
  loop bodies (not fusions' insides, which are no buffers); an account of what its temporaries hold, though not
  all of them are live at once."""
  _, comps, _ = _split(hlo_text)
  fused = set()
  for c in comps:
    for rhs in c.instrs.values():
      if " fusion(" in rhs:
        fused.update(_CALLED.findall(rhs))
  kinds: dict[tuple[str, str, str], list[float]] = {}
  for c in comps:
    if c.name in fused:
      continue
    for rhs in c.instrs.values():
      m = _ARRAY.match(rhs)
      if not m or m.group(3) in _NOT_BUFFERS:
        continue
      dtype, dims, op = m.groups()
      size = _BYTES.get(dtype) or int(re.sub(r"\D", "", dtype)) // 8
      for d in filter(None, dims.split(",")):
        size *= int(d)
      where = re.search(r'op_name="([^"]*)"', rhs)
      where = "/".join(where.group(1).split("/")[-3:]) if where else ""
      kinds.setdefault((op, f"{dtype}[{dims}]", where), []).append(size)
  ranked = sorted(kinds.items(), key=lambda kv: -sum(kv[1]))[:n]
  return [(sum(sizes), f"{op} {shape} x{len(sizes)}" + (f" ({where})" if where else ""))
          for (op, shape, where), sizes in ranked]
