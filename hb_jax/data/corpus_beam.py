"""The corpus job's per-unit work on Apache Beam (the `beam` extra), for corpora larger than one machine.

    python tools/prepare_corpus.py --runner=beam --input PAGES... --output segments.jsonl [-- BEAM_OPTIONS]

Beam's own pipeline options go after `--`: none runs the DirectRunner on this machine; Dataflow, Flink or
Spark are theirs (`--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp` and a way to
give the workers hb_jax, e.g. `--extra_package=dist/hb_jax-0.1.0-py3-none-any.whl` from `pip wheel --no-deps .`).

What runs where: the driver plans the work units (`corpus.plan_units`) and cuts them into batches of
consecutive units; Beam runs `corpus.process_unit` (parse, segment, filter, language id, MinHash: all the
per-segment work) on each batch, which writes its candidates and counts to a scratch folder; the driver
reads the batches back in unit order through the local runner's dedup pass (`corpus.iter_segments`). So
the segments file is the local runner's, byte for byte (tested on the DirectRunner), and the driver holds
only the dedup index, as it does locally. The scratch folder (beside the output, or a temporary local one)
must be reachable by every worker, so a distributed runner needs an object-store output; it is removed when
the job ends. The unit plan travels through the scratch folder too, not inside the pipeline graph, which
Dataflow caps in size.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from typing import Iterator, Sequence

from etils import epath

from hb_jax.data import corpus, records

BATCHES = 1024  # about this many batches: more than a cluster has workers, few enough scratch files


def plan_batches(num_units: int, batches: int | None = None) -> list[tuple[int, int]]:
  """[start, stop) unit ranges of equal size covering every unit in order (about `batches` of them)."""
  size = max(1, math.ceil(num_units / (batches or BATCHES)))
  return [(start, min(num_units, start + size)) for start in range(0, num_units, size)]


def _plan_path(scratch, batch: int) -> epath.Path:
  return epath.Path(scratch) / f"plan-{batch:06d}.jsonl"


def _result_path(scratch, batch: int) -> epath.Path:
  return epath.Path(scratch) / f"result-{batch:06d}.jsonl"


def run_batch(batch: int, scratch: str, config: corpus.CorpusConfig, strict: bool) -> int:
  """On a Beam worker: the batch's units through `process_unit`; per unit, its candidates then its counts."""
  units = [corpus.WorkUnit(**u) for u in records.read_jsonl(_plan_path(scratch, batch))]
  with records.AtomicJsonlWriter(_result_path(scratch, batch)) as w:  # atomic: a retried batch rewrites it whole
    for unit in units:
      candidates, counts = corpus.process_unit(unit, config, strict)
      for c in candidates:
        w.write({"exact": c.exact, "bands": list(c.band_keys), "record": c.record})
      w.write({"unit": unit.index, "counts": counts})
  return batch


def unit_results(units: Sequence[corpus.WorkUnit], config: corpus.CorpusConfig, strict: bool,
                 beam_args: Sequence[str] = (), scratch: epath.PathLike | None = None
                 ) -> Iterator[corpus.UnitResult]:
  """(candidates, counts) of every unit, in unit order, computed by a Beam pipeline (module docstring)."""
  try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
  except ImportError as e:
    raise corpus.CorpusError(f"--runner=beam needs apache-beam, the `beam` extra (pip install -e '.[beam]'): "
                             f"{e}") from None
  scratch = epath.Path(scratch if scratch is not None else tempfile.mkdtemp(prefix="hb_jax_corpus_beam_"))
  try:
    if scratch.exists():
      scratch.rmtree()  # a failed run's leftovers
    batches = plan_batches(len(units))
    for b, (start, stop) in enumerate(batches):
      records.write_jsonl(_plan_path(scratch, b), [dataclasses.asdict(u) for u in units[start:stop]])
    options = PipelineOptions(list(beam_args))
    if not options.view_as(StandardOptions).runner:
      options.view_as(StandardOptions).runner = "DirectRunner"
    with beam.Pipeline(options=options) as pipeline:  # runs, and waits, on leaving the block
      _ = (pipeline
           | "Batches" >> beam.Create(list(range(len(batches))))
           | "Spread" >> beam.Reshuffle()
           | "ProcessUnits" >> beam.Map(run_batch, str(scratch), config, strict))
    for b in range(len(batches)):
      candidates: list[corpus.Candidate] = []
      for row in records.read_jsonl(_result_path(scratch, b)):
        if "record" in row:
          candidates.append(corpus.Candidate(row["record"], row["exact"], tuple(row["bands"])))
        else:
          yield candidates, row["counts"]
          candidates = []
  finally:
    if scratch.exists():
      scratch.rmtree()
