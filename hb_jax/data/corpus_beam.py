"""The corpus transform on Apache Beam (the `beam` extra), for corpora larger than one machine.

Same per-unit work as hb_jax.data.corpus (`process_unit`: parse, segment, filter, sign). Dedup differs in
one way from the streaming job, because a distributed job has no "earlier kept segment": segments are
ordered by (unit index, position), an exact duplicate is any segment whose exact key an earlier segment
has, and a near duplicate is one that shares an LSH band with an earlier segment (kept or not). Both
keep the first occurrence of every group; on chains of near duplicates Beam can drop a little more.

Not run in this repo's CI: apache-beam does not resolve against our pinned protobuf on Python 3.11, so
its test skips when apache_beam is absent.
"""
from __future__ import annotations

from typing import Sequence

from hb_jax.data import corpus, records


def _candidates(unit: corpus.WorkUnit, config: corpus.CorpusConfig, strict: bool):
  candidates, _ = corpus.process_unit(unit, config, strict)
  for pos, c in enumerate(candidates):
    yield (unit.index, pos), c


def _first_of_group(kv):
  """(key, [(order, ...), ...]) -> the orders that lose to the group's first member."""
  _, members = kv
  members = sorted(members)
  for order in members[1:]:
    yield order


def _keep(kv):
  _, groups = kv
  if list(groups["lost"]):
    return []
  return [c.record for c in list(groups["cand"])[:1]]


def run(inputs: Sequence[str], output_prefix: str, config: corpus.CorpusConfig = corpus.CorpusConfig(),
        strict: bool = True, runner: str = "DirectRunner", pipeline_args: Sequence[str] = ()) -> None:
  """Writes `output_prefix-SSSSS-of-NNNNN` JSONL shards of kept segments."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  units = corpus.plan_units(inputs, config)
  options = PipelineOptions(list(pipeline_args), runner=runner)
  with beam.Pipeline(options=options) as p:
    cands = (p | "Units" >> beam.Create(units)
               | "Process" >> beam.FlatMap(_candidates, config, strict)
               | "Reshuffle" >> beam.Reshuffle())
    exact_losers = (cands
                    | "ExactKey" >> beam.Map(lambda oc: (oc[1].exact, oc[0]))
                    | "GroupExact" >> beam.GroupByKey()
                    | "ExactLosers" >> beam.FlatMap(_first_of_group))
    near_losers = (cands
                   | "BandKeys" >> beam.FlatMap(lambda oc: (((b, k), oc[0]) for b, k in enumerate(oc[1].band_keys)))
                   | "GroupBands" >> beam.GroupByKey()
                   | "NearLosers" >> beam.FlatMap(_first_of_group))
    losers = ((exact_losers, near_losers) | "AllLosers" >> beam.Flatten()
              | "LoserKeys" >> beam.Map(lambda order: (order, True)))
    kept = ({"cand": cands, "lost": losers}
            | "Join" >> beam.CoGroupByKey()
            | "Keep" >> beam.FlatMap(_keep))
    (kept | "Dumps" >> beam.Map(records.dumps)
          | "Write" >> beam.io.WriteToText(output_prefix, file_name_suffix=""))
