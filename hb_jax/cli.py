"""Every command line of hb_jax: the console scripts and tools/*.py call the `*_main` functions here.

One convention for all of them, the one `launch/run.py` set: absl flags (`--name=value` or `--name value`,
`--[no]name` for a switch, `--flagfile=FILE`), each command with a FlagValues of its own so that commands can
run one after another in a process. A user's mistake ends a command with one line on stderr, `error: ...`,
naming the flag, file:line, key or path and what was expected, and exit status 2 (the command line itself:
an unknown or missing flag, a config key that does not exist) or 1 (what it names: a missing file, a
malformed record, a finished stage's changed settings). Anything else is a bug and keeps its traceback;
`--verbose` shows the traceback of a user's mistake too. `guarded` (and `user_mistake`) is that one place.

Heavy modules (jax, the tools' own) are imported inside the commands, so `--help` and a mistyped flag
answer at once.
"""
from __future__ import annotations

import logging
import sys
import traceback
from typing import Callable, Sequence

from absl import flags

USAGE = 2   # exit status: the command line cannot run as written
FAILED = 1  # exit status: it ran into a user's mistake in what it names (files, records, run state)


class UsageError(ValueError):
  """A command line that cannot run as written: a missing flag, an argument where none is taken."""


# Exceptions that mean a user's mistake wherever they come from, by (module, class name): looked up in
# sys.modules when a command fails, so the check imports nothing (a module never imported raised nothing).
# Each is raised for bad inputs, configs or run state and says which; OSError is the system's answer
# about a path (FileNotFoundError, PermissionError, ...).
USER_ERRORS = (
  ("hb_jax.config", "ConfigError"),
  ("hb_jax.data.records", "RecordError"),
  ("hb_jax.data.corpus", "CorpusError"),
  ("hb_jax.model_folder", "CheckpointError"),
  ("hb_jax.convert.sources", "ConversionError"),
  ("hb_jax.eval.io", "EvalError"),
  ("hb_jax.sample.plan", "PlanError"),
  ("hb_jax.pipeline.manifest", "StageConfigChanged"),
)


def one_line(err: BaseException) -> str:
  """The error's message on one line (a KeyError's without the quotes repr adds)."""
  text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
  text = " ".join(part.strip() for part in text.splitlines() if part.strip())
  return text or type(err).__name__


def is_user_mistake(err: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
  if isinstance(err, (UsageError, flags.Error, OSError) + tuple(also)):
    return True
  for module, name in USER_ERRORS:
    cls = getattr(sys.modules.get(module), name, None)
    if cls is not None and isinstance(err, cls):
      return True
  return False


def user_mistake(err: BaseException, code: int, verbose: bool = False) -> int:
  """Prints `error: <one line>` to stderr and returns `code`; with `verbose`, re-raises (the traceback)."""
  if verbose:
    raise err
  print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
  return code


def guarded(body: Callable[[], int], *, verbose: bool = False, also: tuple[type[BaseException], ...] = ()) -> int:
  """Runs a command's body: a user's mistake (`is_user_mistake`, or one of `also`, the errors this command's
  library raises for its inputs) becomes one line and an exit status; anything else propagates."""
  try:
    return body()
  except Exception as e:  # sorted here: one line for a user's mistake, the traceback for anything else
    if not is_user_mistake(e, also):
      raise
    return user_mistake(e, USAGE if isinstance(e, (UsageError, flags.Error)) else FAILED, verbose)


# ------------------------------------------------------------------------------------------ tool commands
HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def _help_text(fv: flags.FlagValues, doc: str) -> str:
  lines = [doc.strip(), "", "flags:"]
  for module_flags in fv.flags_by_module_dict().values():
    for flag in module_flags:
      default = "" if flag.default is None or flag.default == [] else f" (default: {flag.default_as_str})"
      name = f"[no]{flag.name}" if flag.boolean else flag.name
      lines.append(f"  --{name}: {flag.help}{default}")
  return "\n".join(lines)


def spread_values(argv: Sequence[str], names: Sequence[str]) -> list[str]:
  """`--input a b c` -> `--input a --input b --input c` for the multi-valued flags `names` (what argparse's
  nargs='+' accepted, so a shell glob after the flag still works); the order is kept."""
  out: list[str] = []
  current, pending = None, False  # the multi-valued flag being read; whether its first value is still due
  for arg in argv:
    if arg.startswith("-") and arg != "-":
      name = arg.lstrip("-").split("=", 1)[0]
      current = name if name in names else None
      pending = current is not None and "=" not in arg
      out.append(arg)
    elif current is not None and not pending:
      out += [f"--{current}", arg]
    else:
      out.append(arg)
      pending = False
  return out


def run_command(fv: flags.FlagValues, argv: Sequence[str] | None, body: Callable[..., int], *,
                doc: str, required: Sequence[str] = (), multi: Sequence[str] = (), passthrough: bool = False,
                also: tuple[type[BaseException], ...] = ()) -> int:
  """Parses `argv` (without the program name; default sys.argv[1:]) into `fv` and runs `body(fv)` guarded.

  required: flags that must be given. multi: multi-valued flags that take several values after one
  `--name`. passthrough: arguments after `--` are kept, unparsed, for `body(fv, rest)` (else refused).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  flags.DEFINE_bool("verbose", False, "show the traceback of a user's mistake too (it prints one line)",
                    flag_values=fv)
  rest: list[str] = []
  if "--" in argv and passthrough:
    argv, rest = argv[:argv.index("--")], argv[argv.index("--") + 1:]
  if any(a in HELP_ARGS for a in argv):
    print(_help_text(fv, doc))
    return 0
  verbose = any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)
  try:
    extra = fv(["prog", *spread_values(argv, multi)])[1:]
    if extra:
      raise UsageError(f"unexpected argument {extra[0]!r}; every value goes after its --flag (see --help)")
    for name in required:
      if fv[name].value in (None, []):
        raise UsageError(f"--{name} is required: {fv[name].help}")
  except (UsageError, flags.Error) as e:
    return user_mistake(e, USAGE, verbose)
  return guarded(lambda: body(fv, rest) if passthrough else body(fv), verbose=fv.verbose, also=also)


def _define(fv: flags.FlagValues, kind: str, name: str, default, help_text: str, **kw) -> None:
  if kind == "enum":  # its values come before the help
    flags.DEFINE_enum(name, default, kw.pop("enum_values"), help_text, flag_values=fv, **kw)
  else:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=fv, **kw)


# -------------------------------------------------------------------------------------- model folders
DTYPES = ["float32", "bfloat16", "float16"]


def convert_llama_main(argv: Sequence[str] | None = None) -> int:
  """`hb-convert-llama` / tools/convert_llama.py."""
  fv = flags.FlagValues()
  _define(fv, "string", "input", None, "HF folder (config.json + safetensors), Meta folder (params.json + "
          "consolidated.NN.pth) or llama.cpp GGUF file; the format is detected")
  _define(fv, "string", "output", None, "model folder to write (local path or object-store URL)")
  _define(fv, "enum", "param_dtype", "float32", "dtype of the stored params", enum_values=DTYPES)
  _define(fv, "bool", "overwrite", False, "replace a model folder already at --output")

  def body(fv) -> int:
    from hb_jax.convert import convert
    logging.basicConfig(level=logging.INFO)
    cfg = convert(fv.input, fv.output, param_dtype=fv.param_dtype, overwrite=fv.overwrite)
    print(f"wrote {fv.output}: {cfg.num_params / 1e6:.1f}M params, {cfg.num_layers} layers, "
          f"{cfg.num_heads} heads / {cfg.num_kv_heads} KV heads")
    return 0

  return run_command(fv, argv, body, required=("input", "output"),
                     doc="Convert a Hugging Face or Meta LLaMA folder or a GGUF file to an hb_jax model folder "
                         "(model.json + Orbax params/ + tokenizer and its settings).")



def export_hf_main(argv: Sequence[str] | None = None) -> int:
  """`hb-export-hf` / tools/export_hf.py."""
  fv = flags.FlagValues()
  _define(fv, "string", "input", None, "hb_jax model folder")
  _define(fv, "string", "output", None, "HF folder to write")
  _define(fv, "enum", "dtype", "float32", "dtype of the written safetensors", enum_values=DTYPES)
  _define(fv, "bool", "overwrite", False, "replace a folder already at --output")

  def body(fv) -> int:
    from hb_jax.convert import export_hf
    export_hf(fv.input, fv.output, dtype=fv.dtype, overwrite=fv.overwrite)
    print(f"wrote {fv.output}")
    return 0

  return run_command(fv, argv, body, required=("input", "output"),
                     doc="Export an hb_jax model folder to a Hugging Face LLaMA folder.")


# ------------------------------------------------------------------------------------------- the launcher
def run_main(argv: Sequence[str] | None = None) -> int:
  """`hb-run` / launch/run.py: the flags of hb_jax.pipeline.launch (argv without the program name).

  absl parses the launcher's flags, with this wrapping around the parse: defining `--config` already loads
  the default config file and applies `--config.a.b=` overrides read from sys.argv (ml_collections does
  that at import when no `--config=` is given), so the import of the launcher is inside it too.
  """
  from absl import app
  argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
  verbose = "--verbose" in argv
  try:
    from hb_jax.pipeline import launch
  except Exception as e:
    return _launcher_flag_mistake(e, argv, verbose)

  def parse(args: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(args)
      _check_config_file()
      if rest[1:]:
        raise UsageError(f"unexpected argument {rest[1]!r}; every value goes after its --flag (see --helpshort)")
      return rest
    except Exception as e:
      sys.exit(_launcher_flag_mistake(e, args, verbose))

  try:
    app.run(lambda a: sys.exit(launch.main(a)), argv=argv, flags_parser=parse)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else FAILED)
  return 0


def _check_config_file() -> None:
  """ml_collections defers a config file that is not there to the first use of the config, as a multi-line
  OSError; name it here instead."""
  from ml_collections import config_flags
  try:
    flags.FLAGS["config"].value.get("name")
  except OSError:
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    raise UsageError(f"--config={path}: expected a config file (e.g. configs/demo.py), found no file at "
                     f"{path!r}") from None


def _launcher_flag_mistake(err: Exception, argv: Sequence[str], verbose: bool) -> int:
  """One line for a mistake in the launcher's flags (absl's, or a `--config.a.b=` key that does not exist,
  which ml_collections raises as a KeyError or AttributeError); anything else is re-raised."""
  if verbose:
    raise err
  if isinstance(err, flags.Error) or isinstance(err, UsageError):
    text = one_line(err)
    if "Error whilst parsing config file" in str(err):  # the config file's own error, with its traceback inlined
      lines = [l for l in str(err).splitlines() if l.strip()]
      text = f"{str(err).split(': Error whilst', 1)[0]}: {lines[-1].strip()}"
    return user_mistake(UsageError(text), USAGE, verbose)
  frames = traceback.extract_tb(err.__traceback__)
  if isinstance(err, (KeyError, AttributeError)) and frames and "ml_collections" in frames[-1].filename:
    # A --config.a.b= key the config lacks: the config layer names it (nearest key, or what replaced it).
    from hb_jax.config import ConfigError, check_key
    from hb_jax.pipeline.config import PipelineConfig
    for arg in argv:
      if arg.startswith("--config."):
        try:
          check_key(PipelineConfig, arg.split("=", 1)[0][len("--config."):], where="--config")
        except ConfigError as e:
          return user_mistake(UsageError(str(e)), USAGE, verbose)
    return user_mistake(UsageError(one_line(err)), USAGE, verbose)
  raise err


# -------------------------------------------------------------------------------------------- data tools
def prepare_seed_main(argv: Sequence[str] | None = None) -> int:
  """tools/prepare_seed.py: an oasst1 export (or pairs JSONL) -> seed.jsonl (see hb_jax/data/seed.py)."""
  import json

  from hb_jax.data import seed
  fv = flags.FlagValues()
  _define(fv, "string", "input", None, "oasst1 messages or trees JSONL (.gz ok), or pairs JSONL")
  _define(fv, "string", "output", None, "seed.jsonl to write (its counts go beside it, .stats.json)")
  _define(fv, "integer", "max", seed.DEFAULT_MAX, "cap (deterministic; 0: no cap)", lower_bound=0)
  _define(fv, "bool", "lenient", False, "skip and count bad lines instead of failing")

  def body(fv) -> int:
    stats = seed.prepare_seed(fv.input, fv.output, fv.max or None, strict=not fv.lenient)
    print(json.dumps(stats.to_dict(), indent=2, sort_keys=True))
    return 0

  return run_command(fv, argv, body, required=("input", "output"),
                     doc="oasst1 export (or instruction/output JSONL) -> seed.jsonl: first turns, English, rank 0.")


def prepare_corpus_main(argv: Sequence[str] | None = None) -> int:
  """tools/prepare_corpus.py: web pages -> segments.jsonl (hb_jax/data/corpus.py; corpus_beam.py on Beam)."""
  import dataclasses
  import json

  from hb_jax.data import corpus
  d = corpus.CorpusConfig()
  fv = flags.FlagValues()
  _define(fv, "multi_string", "input", [], "files, folders, globs, or tfds:NAME[/CONFIG][:SPLIT]; several may "
          "follow one --input")
  _define(fv, "string", "output", None, "segments.jsonl to write (its counts go beside it, .stats.json)")
  _define(fv, "integer", "min-chars", d.min_chars, "shortest segment kept, in characters")
  _define(fv, "integer", "max-chars", d.max_chars, "longest segment kept, in characters")
  _define(fv, "float", "near-dup-threshold", d.near_dup_threshold, "estimated Jaccard of word 5-grams above "
          "which a segment is a near duplicate of an earlier one")
  _define(fv, "string", "lang", d.lang, "language kept (py3langid code)")
  _define(fv, "string", "text-field", d.text_field, "JSONL field holding a segment's text")
  _define(fv, "string", "tfds-data-dir", None, "TFDS data_dir for tfds: inputs")
  _define(fv, "integer", "workers", None, "local processes (default: every core)", lower_bound=1)
  _define(fv, "bool", "lenient", False, "skip and count bad records instead of failing")
  _define(fv, "enum", "runner", "local", "local: this machine's processes; beam: an Apache Beam pipeline "
          "(the `beam` extra), with Beam's own options after `--` (default DirectRunner)",
          enum_values=list(corpus.RUNNERS))

  def body(fv, beam_args: list[str]) -> int:
    if beam_args and fv.runner != "beam":
      raise UsageError(f"arguments after '--' are Beam pipeline options, for --runner=beam only; found "
                       f"{beam_args[:3]} with --runner={fv.runner}")
    config = dataclasses.replace(d, min_chars=fv["min-chars"].value, max_chars=fv["max-chars"].value,
                                 near_dup_threshold=fv["near-dup-threshold"].value, lang=fv.lang,
                                 text_field=fv["text-field"].value, tfds_data_dir=fv["tfds-data-dir"].value)
    stats = corpus.prepare_corpus(fv.input, fv.output, config, strict=not fv.lenient, workers=fv.workers,
                                  runner=fv.runner, beam_args=beam_args)
    print(stats.table())
    print(json.dumps(stats.to_dict(), sort_keys=True), file=sys.stderr)
    return 0

  return run_command(fv, argv, body, required=("input", "output"), multi=("input",), passthrough=True,
                     doc="Web corpus (HTML, WARC, JSONL, text, TFDS) -> segments.jsonl: text after HTML headers, "
                         "boilerplate removed, filtered by length, headers, language and (near-)duplicates.\n"
                         "  python tools/prepare_corpus.py --input pages/ crawl/*.warc.gz --output segments.jsonl "
                         "[--runner=beam -- --runner=DataflowRunner ...]")


def train_tokenizer_main(argv: Sequence[str] | None = None) -> int:
  """tools/train_tokenizer.py: a small sentencepiece tokenizer with LLaMA's settings (demo and tests)."""
  fv = flags.FlagValues()
  _define(fv, "multi_string", "input", [], "plain-text files, one sentence or paragraph a line; several may "
          "follow one --input")
  _define(fv, "string", "output", None, "folder to write tokenizer.model into")
  _define(fv, "integer", "vocab_size", 1024, "pieces in the vocabulary", lower_bound=1)

  def body(fv) -> int:
    from hb_jax.tokenizer import load_tokenizer, train_sentencepiece
    path = train_sentencepiece(fv.input, fv.output, fv.vocab_size)
    tok = load_tokenizer(path)
    digits = [tok.encode(d) for d in "12345"]
    print(f"wrote {path}: vocab {tok.vocab_size}, bos {tok.bos_id}, eos {tok.eos_id}, digits {digits}")
    return 0

  # sentencepiece's trainer raises RuntimeError for what it cannot learn from the input (e.g. an empty file)
  return run_command(fv, argv, body, required=("input", "output"), multi=("input",), also=(RuntimeError,),
                     doc="Train a sentencepiece tokenizer with LLaMA's settings (BPE, byte_fallback, split "
                         "digits, unk=0 bos=1 eos=2) -> OUTPUT/tokenizer.model.")


# ------------------------------------------------------------------------------------------------ evaluation
CHAT_TEMPLATE_HELP = "wrap prompts in the model's own chat template (an instruct model; tokenizer_config.json's) instead of the paper's [INST] format"


def _prompt_style(lm, chat_template: bool):
  """The paper's [INST] style, or with --chat_template the model's own (an error if it has none)."""
  from hb_jax.data import prompts
  if not chat_template:
    return prompts.DEFAULT_STYLE
  if lm.tokenizer is None or not getattr(lm.tokenizer, "chat_template", None):
    raise UsageError(f"--chat_template: the model at {lm.path} has no chat template (tokenizer_config.json's "
                     "chat_template or chat_template.jinja)")
  return prompts.chat_style(lm.tokenizer)


def _print_summary(summary: dict) -> None:
  import json
  print(json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False))


def eval_generate_main(argv: Sequence[str] | None = None) -> int:
  """`hb-eval-generate`: answers for a file of instructions, written in AlpacaEval's model-output format."""
  from hb_jax.eval.generate import TAGS
  fv = flags.FlagValues()
  _define(fv, "string", "model", None, "model folder (hb_jax.api.load)")
  _define(fv, "string", "input", None, "instructions: JSONL or a JSON list")
  _define(fv, "string", "output", None, "JSON list to write (atomically)")
  _define(fv, "string", "summary", None, "also write the printed JSON summary here")
  _define(fv, "enum", "tag", "none", "tag sentence after the instruction: none, seed (AI Assistant), web (web "
          "search), both", enum_values=list(TAGS))
  _define(fv, "string", "generator", "", "name in the output's 'generator' (default: model folder name)")
  _define(fv, "float", "temperature", 0.7, "sampling temperature (0: greedy)")
  _define(fv, "float", "top_p", 0.9, "nucleus sampling mass")
  _define(fv, "integer", "max_new_tokens", 512, "longest answer in tokens")
  _define(fv, "integer", "batch", 32, "largest decode batch (a power of two)")
  _define(fv, "integer", "seed", 0, "run seed, hashed with each instruction")
  _define(fv, "integer", "max_items", 0, "only the first N instructions (0: all)")
  _define(fv, "bool", "chat_template", False, CHAT_TEMPLATE_HELP)

  def body(fv) -> int:
    from hb_jax import api
    from hb_jax.eval import generate
    logging.basicConfig(level=logging.WARNING)
    from hb_jax.config import SamplingConfig
    sampling = SamplingConfig(temperature=fv.temperature, top_p=fv.top_p, max_new_tokens=fv.max_new_tokens,
                              seed=fv.seed)
    lm = api.load(fv.model)
    cfg = generate.GenerateConfig(tag=fv.tag, sampling=sampling, batch=fv.batch, generator=fv.generator,
                                  style=_prompt_style(lm, fv.chat_template))
    _print_summary(generate.run(lm, fv.input, fv.output, cfg, max_items=fv.max_items, summary_path=fv.summary))
    return 0

  return run_command(fv, argv, body, required=("model", "input", "output"),
                     doc="Generate answers for instructions (JSONL with 'instruction', or AlpacaEval's JSON list) "
                         "with the paper's decoding; writes AlpacaEval's model-output JSON list (instruction, "
                         "output, generator).")


def judge_main(argv: Sequence[str] | None = None) -> int:
  """`hb-judge`: a local model judges two AlpacaEval output files in both orders."""
  from hb_jax.eval.generate import TAGS
  fv = flags.FlagValues()
  _define(fv, "string", "model", None, "judge model folder (hb_jax.api.load)")
  _define(fv, "string", "outputs_a", None, "outputs of model A")
  _define(fv, "string", "outputs_b", None, "outputs of model B (e.g. the reference)")
  _define(fv, "string", "output", None, "JSON summary to write")
  _define(fv, "string", "verdicts", None, "per-item verdicts JSONL (default: the --output path with "
          ".verdicts.jsonl)")
  _define(fv, "float", "tie_margin", 0.1, "smallest |p(A better) - p(B better)| averaged over both orders that "
          "is not a tie")
  _define(fv, "enum", "tag", "none", "tag sentence in the judge's prompt", enum_values=list(TAGS))
  _define(fv, "integer", "batch", 16, "scoring batch")
  _define(fv, "integer", "max_output_tokens", 0, "cut each answer to N tokens (0: whole)")
  _define(fv, "integer", "max_items", 0, "only the first N matched items (0: all)")
  _define(fv, "bool", "chat_template", False, CHAT_TEMPLATE_HELP)

  def body(fv) -> int:
    from hb_jax import api
    from hb_jax.eval import judge
    logging.basicConfig(level=logging.WARNING)
    verdicts = fv.verdicts
    if verdicts is None:
      base = fv.output[:-5] if fv.output.endswith(".json") else fv.output
      verdicts = base + ".verdicts.jsonl"
    lm = api.load(fv.model)
    cfg = judge.JudgeConfig(tie_margin=fv.tie_margin, tag=fv.tag, batch=fv.batch,
                            max_output_tokens=fv.max_output_tokens, style=_prompt_style(lm, fv.chat_template))
    _print_summary(judge.run(lm, fv.outputs_a, fv.outputs_b, fv.output, verdicts, cfg, max_items=fv.max_items))
    return 0

  return run_command(fv, argv, body, required=("model", "outputs_a", "outputs_b", "output"),
                     doc="Pairwise judge: a model folder compares two output files (AlpacaEval JSON list or JSONL, "
                         "matched by instruction) in both orders, from p('1') vs p('2'); prints and writes the win "
                         "rate of A over B.")


def eval_mc_main(argv: Sequence[str] | None = None) -> int:
  """`hb-eval-mc`: multiple-choice accuracy from log-likelihoods, zero- or k-shot."""
  from hb_jax.eval.templates import MC_FORMATS
  fv = flags.FlagValues()
  _define(fv, "string", "model", None, "model folder (hb_jax.api.load)")
  _define(fv, "string", "input", None, "questions JSONL")
  _define(fv, "string", "output", None, "JSON summary to write")
  _define(fv, "string", "dev", None, "JSONL of solved examples for the shots (default: the input itself, never "
          "the question being asked)")
  _define(fv, "integer", "shots", 0, "solved examples before each question")
  _define(fv, "enum", "format", "cloze", "cloze: score ' {choice}'; letters: list 'A. ...' lines and score "
          "' {letter}'", enum_values=list(MC_FORMATS))
  _define(fv, "integer", "batch", 16, "scoring batch")
  _define(fv, "integer", "seed", 0, "seed of the shot ranking within the input")
  _define(fv, "string", "details", None, "per-question JSONL (predictions, log-likelihoods)")
  _define(fv, "integer", "max_items", 0, "only the first N questions (0: all)")

  def body(fv) -> int:
    from hb_jax import api
    from hb_jax.eval import multiple_choice as mc
    logging.basicConfig(level=logging.WARNING)
    cfg = mc.MCConfig(shots=fv.shots, format=fv["format"].value, batch=fv.batch, seed=fv.seed)
    _print_summary(mc.run(api.load(fv.model), fv.input, fv.output, cfg, dev_path=fv.dev,
                          details_path=fv.details, max_items=fv.max_items))
    return 0

  return run_command(fv, argv, body, required=("model", "input", "output"),
                     doc="Multiple-choice evaluation (JSONL: question, choices, answer index or letter, optional "
                         "subject) by log-likelihood, summed and per token.")


def estimate_main(argv: Sequence[str] | None = None) -> int:
  """`hb-estimate` / tools/estimate.py: FLOPs, bytes and hours per stage of a config at the paper's sizes."""
  from hb_jax import estimate as est
  fv = flags.FlagValues()
  _define(fv, "string", "config", None, "configs/X.py, optionally with a hardware variant: "
          "configs/llama65b.py:tpu-v5p")
  _define(fv, "enum", "hardware", None, "chip kind (default: the config variant's)", enum_values=sorted(est.HARDWARE))
  _define(fv, "integer", "chips", 0, "chips in the job (default: the config variant's reference slice, else one "
          "host)")
  _define(fv, "string", "preset", None, "model preset (default: the config's MODEL_PRESET)")
  _define(fv, "float", "mfu", None, "training/prefill FLOP utilisation (default 0.4)")
  _define(fv, "float", "decode_efficiency", None, "achieved fraction of the decode roofline (default 0.5)")
  _define(fv, "multi_string", "assume", [], "override any assumption (repeatable), e.g. --assume "
          "segment_tokens=400")
  _define(fv, "bool", "json", False, "print one JSON object instead of the table")

  def body(fv) -> int:
    import json
    loaded = est.load_config(fv.config, fv.hardware, fv.preset)
    hw = est.hardware(fv.hardware or loaded.hardware)
    # Default: the variant's reference slice (another chip kind keeps its chip count), else one host.
    chips = fv.chips or loaded.chips or hw.chips_per_host
    overrides = list(fv.assume)
    overrides += [f"mfu={fv.mfu}"] if fv.mfu is not None else []
    overrides += [f"decode_efficiency={fv.decode_efficiency}"] if fv.decode_efficiency is not None else []
    assumptions = est.Assumptions().with_overrides(overrides)
    result = est.estimate(loaded.pipeline, loaded.model, hw, chips, assumptions,
                          config_name=fv.config, model_name=loaded.model_name)
    if fv.json:
      print(json.dumps({**result.to_dict(), "slice": loaded.slice}, sort_keys=True))
    else:
      print(est.format_text(result))
    return 0

  # A bad variant or preset is a ValueError (ConfigError is one), an unknown assumption a KeyError.
  return run_command(fv, argv, body, required=("config",), also=(ValueError, KeyError),
                     doc="Estimate FLOPs, bytes moved and chip-/wall-hours per pipeline stage of a config at the "
                         "paper's data sizes (see hb_jax/estimate/).")
