"""The `decaylab` command line: train, generate, evaluate, audit, recommend, data, demo, sweep (and report, from
report/)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from decaylab.errors import RankError, UserError
from decaylab.regularization.rules import DECAY_SETS, MODES, RULES, SWEEPABLE, decay_set_names
from decaylab.ui import console as make_console

if TYPE_CHECKING:
    from decaylab.training.distributed import Plan

app = typer.Typer(
    help="Train seq2seq text-generation models with weight decay done right, and choose λ on evidence.",
    no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
)
data_app = typer.Typer(help="Builtin datasets: list, show, export.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (sections: data, "
                                                "tokenizer, model, train, regularization, generation).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any key: section.key=value (repeatable).")]


@app.command()
def train(
    config: ConfigOpt = None,
    data: Annotated[str | None, typer.Option(help="Builtin dataset name or a TSV/JSONL file.")] = None,
    preset: Annotated[str | None, typer.Option(help="Model size preset: tiny, small, base.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam, adamw or sgd.")] = None,
    mode: Annotated[str | None, typer.Option(help="Regularization mode: " + "; ".join(
        # a formula's brackets are text, not rich markup (the help is rendered with rich)
        f"{name} ({RULES[name].formula.replace('[', chr(92) + '[')})" for name in MODES) + ".")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", "--lambda", help="λ.")] = None,
    l1: Annotated[float | None, typer.Option(help="L1 strength λ₁.")] = None,
    decay_set: Annotated[str | None, typer.Option(help=", ".join(DECAY_SETS) + ".")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout probability.")] = None,
    max_examples: Annotated[int | None, typer.Option(help="Use at most this many training pairs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 or bf16 (autocast).")] = None,
    sets: SetOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run folder from checkpoints/last.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run that --output already holds "
                                            "(its files are removed first; other files stay).")] = False,
    nproc: Annotated[int | None, typer.Option(help="Train on this many data-parallel processes on this machine "
                                              "(DistributedDataParallel through torchrun: gloo on the CPU, one GPU "
                                              "per process with NCCL); the same steps as one process on the same "
                                              "global batches. See docs/scaling.md.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final summary.")] = False,
) -> None:
    """Train a model; writes config.yaml, meta.json, metrics.jsonl, tokenizer and checkpoints to --output."""
    from decaylab.config import build_run_config
    from decaylab.runfolder.lock import folder_problem
    from decaylab.training import Trainer, resume_run
    from decaylab.training.distributed import Plan, launch, launched_world, train_ranks

    world = launched_world()
    if nproc is not None:
        _at_least("train", "--nproc", nproc, 1)
        if world > 1:
            raise UserError(f"--nproc: this process is already one of torchrun's {world} ranks; give --nproc to a "
                            "plain `decaylab train` (it starts torchrun itself), or run torchrun without it")

    def plan() -> Plan:
        """The run to train, after the checks (on rank 0 alone under torchrun: the others never read the folder)."""
        if resume is not None:
            if overwrite:
                raise UserError("--overwrite: starts a new run in place of an old one; it does not go with --resume")
            if output is not None and output.resolve() != resume.resolve():
                raise UserError("--output and --resume name different folders; give only --resume RUN")
            problem = folder_problem(resume)
            if problem is not None:
                raise UserError(f"--resume {problem}")
            return Plan(None, resume)
        cfg = build_run_config(
            config, sets, **{"data.name": data, "model.preset": preset, "train.epochs": epochs, "train.lr": lr,
                             "train.optimizer": optimizer, "regularization.mode": mode,
                             "regularization.weight_decay": weight_decay, "regularization.l1": l1,
                             "regularization.decay_set": decay_set, "model.dropout": dropout,
                             "data.max_examples": max_examples, "seed": seed, "train.device": device,
                             "train.precision": precision})
        if output is None:
            raise UserError("--output: give the run folder to write, e.g. --output runs/first")
        problem = folder_problem(output)
        if problem is not None:
            raise UserError(f"--output {problem}")
        return Plan(cfg, output, overwrite)

    if nproc is not None and nproc > 1:
        chosen = plan()  # bad options are one line here, before any process starts
        _check_gpus(chosen, nproc)
        code = launch(_without_option(sys.argv[1:], "--nproc"), nproc, chosen.run_dir)
        if code:
            raise SystemExit(code)
        return
    if world > 1:  # one of torchrun's ranks: rank 0 plans, writes and reports
        result = train_ranks(plan, quiet=quiet)
        if result is None:
            return
    else:
        chosen = plan()
        if chosen.config is None:
            result = resume_run(chosen.run_dir, quiet=quiet)
        else:
            # The Trainer owns the folder while it trains (a second process is refused) and, without --overwrite,
            # refuses a folder that already holds a run.
            result = Trainer(chosen.config, chosen.run_dir, quiet=quiet, overwrite=chosen.overwrite).fit()
    best = result.best
    typer.echo(f"best val loss {best['val_loss']:.4f} (ppl {best['val_ppl']:.2f}) at step {best['step']}; "
               f"run folder {result.run_dir}")


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="A trained run folder.")],
    input: Annotated[str | None, typer.Option(
        "--input", "-i", help="File with one source (a language model: one prompt) per line, or - for stdin.")] = None,
    prompt: Annotated[list[str] | None, typer.Option(
        help="A source or prompt given on the command line (repeatable; with --input, these come first).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        help="Most tokens generated per input (default: a language model 64; an encoder-decoder follows "
             "generation.max_len_ratio and max_len_extra).")] = None,
    beam: Annotated[int, typer.Option(help="Beam size (1 = greedy).")] = 1,
    method: Annotated[str | None, typer.Option(help="greedy, beam or sample (default from --beam).")] = None,
    length_penalty: Annotated[float | None, typer.Option(help="Beam length penalty α.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sampling: keep the k most likely tokens (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Sampling: nucleus mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed (the same seed gives the same samples).")] = 0,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
) -> None:
    """Translate each input line, or continue each prompt of a language model; one output per line on stdout."""
    from decaylab.run import check_options, load

    try:  # checked before the model loads, so a typo costs nothing
        check_options(beam, method, max_new_tokens, length_penalty, temperature, top_k, top_p)
    except ValueError as exc:
        name, _, rest = str(exc).partition(": ")
        raise UserError(f"generate: --{name.replace('_', '-')}: {rest}") from None
    if input is None and not prompt:
        raise UserError("generate: give the inputs: --input FILE (or - for stdin) and/or --prompt TEXT")
    trained = load(run, checkpoint, device, option="--checkpoint")
    lines = list(prompt or []) + (_read_lines(input) if input is not None else [])
    where = "stdin" if input == "-" else input or "--prompt"
    if trained.language_model:
        context = trained.context

        def warn(index: int, tokens: int) -> None:
            print(f"warning: {where}:{index + 1}: a prompt of {tokens:,} tokens does not fit the model's "
                  f"{context} positions with --max-new-tokens: its last tokens are kept", file=sys.stderr)
    else:
        limit, why = trained.input_limit()

        def warn(index: int, tokens: int) -> None:
            size = "far more" if tokens < 0 else f"{tokens:,} tokens, more"
            print(f"warning: {where}:{index + 1}: {size} than this model takes ({limit} tokens: {why}; set "
                  "generation.max_input_tokens to change it): cut to its first tokens", file=sys.stderr)
    try:
        outputs = trained.generate(lines, beam=beam, method=method, max_new_tokens=max_new_tokens,
                                   length_penalty=length_penalty, temperature=temperature, top_k=top_k, top_p=top_p,
                                   seed=seed, on_cut=warn)
    except ValueError as exc:  # the search validates its arguments; show which option was wrong, not a traceback
        raise UserError(f"generate: {exc}") from None
    # a language model's text may hold line breaks, never a blank line (that ends a document): one separates outputs
    separator = "\n\n" if trained.language_model else "\n"
    sys.stdout.write(separator.join(outputs) + "\n")


def _check_gpus(plan: Plan, nproc: int) -> None:
    """`--nproc N` on GPUs needs N of them (one per process); on the CPU any N shares the cores."""
    import torch

    from decaylab.runfolder.layout import load_run_config

    device = (plan.config or load_run_config(plan.run_dir)).train.device
    count = torch.cuda.device_count()
    if device == "cuda" or (device == "auto" and count):
        if count < nproc:
            raise UserError(f"--nproc {nproc}: each process trains on a GPU of its own and torch sees {count}; "
                            f"use --nproc {count}, or train.device=cpu")


def _without_option(args: list[str], name: str) -> list[str]:
    """`args` without `name VALUE` and `name=VALUE` (the command line the ranks of `--nproc` run)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def _ranks_problem(args: list[str]) -> str | None:
    """Why this command line cannot run as it was started (torchrun's ranks, or --nproc), or None."""
    command = next((arg for arg in args if not arg.startswith("-")), None)
    nproc = any(arg == "--nproc" or arg.startswith("--nproc=") for arg in args)
    if command == "sweep" and nproc:
        how = ("--vectorized trains a grid's points as one stacked model in one process, and does not split it "
               "over ranks" if "--vectorized" in args else "a sweep runs its trials in --workers processes")
        return f"sweep: --nproc: data-parallel training is for one model (`decaylab train --nproc N`); {how}"
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and command not in (None, "train"):
        return (f"{command}: runs in one process; under torchrun only `decaylab train` splits its batches over "
                "ranks")
    return None


def _at_least(command: str, option: str, value: int | None, minimum: int) -> None:
    """A UserError naming the command's `option` unless `value` is None or >= `minimum`."""
    if value is not None and value < minimum:
        raise UserError(f"{command}: {option}: must be >= {minimum} (got {value})")


def _read_lines(source: str) -> list[str]:
    """The lines of a UTF-8 file, or of stdin for "-"; invalid UTF-8 is an error naming the line."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text stream already decoded (tests, embedding)
            return [line.rstrip("\r\n") for line in sys.stdin]
        raw, where = stream.read(), "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            from decaylab.files import not_found

            raise UserError(not_found(path, "input file"))
        raw, where = path.read_bytes(), str(path)
    lines = []
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"{where}:{number}: not valid UTF-8 (byte {exc.start} of the line)") from None
    return lines


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A trained run folder.")],
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    beam: Annotated[int | None, typer.Option(help="Beam size for BLEU/chrF (default: the run's generation.beam).")]
    = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    max_examples: Annotated[int | None, typer.Option(help="Evaluate only the first N pairs of the split.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
) -> None:
    """Loss, perplexity, BLEU and chrF (a language model: bits per character) and the generalization gap on a
    split; written to RUN/eval.json."""
    from rich.markup import escape
    from rich.table import Table

    from decaylab.evaluation.evaluate import SPLITS
    from decaylab.run import load

    _at_least("evaluate", "--beam", beam, 1)
    _at_least("evaluate", "--max-examples", max_examples, 1)
    if split not in SPLITS:  # before the model loads
        raise UserError(f"--split: must be one of {', '.join(SPLITS)} (got {split!r})")
    result = load(run, checkpoint, device, option="--checkpoint").evaluate(split, beam=beam,
                                                                           max_examples=max_examples)
    console = make_console()
    if "bits_per_character" in result:  # a language model
        title = (f"{run} — {split} ({result['documents']} documents, {result['tokens']:,} tokens, "
                 f"{result['characters']:,} characters, {checkpoint} checkpoint)")
        keys = ("loss", "ppl", "bits_per_character", "train_loss", "gap")
    else:
        title = f"{run} — {split} ({result['examples']} pairs, {checkpoint} checkpoint, beam {result['beam']})"
        keys = ("loss", "ppl", "bleu", "chrf", "train_loss", "gap")
    table = Table(title=escape(title))  # a path is text, not rich markup
    for key in keys:
        table.add_column("bpc" if key == "bits_per_character" else key, justify="right")
    table.add_row(*(f"{result[key]:.4f}" if key in ("loss", "train_loss", "gap", "bits_per_character")
                    else f"{result[key]:.2f}" for key in keys))
    console.print(table)
    if "bleu_signature" in result:
        console.print(f"BLEU signature: {result['bleu_signature']}\nchrF signature: {result['chrf_signature']}")


@app.command()
def audit(
    config: Annotated[Path | None, typer.Argument(help="YAML config (default: built-in defaults).")] = None,
    sets: SetOpt = None,
    mode: Annotated[str | None, typer.Option(help="Regularization mode.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", "--lambda", help="λ.")] = None,
    decay_set: Annotated[str | None, typer.Option(help=", ".join(DECAY_SETS) + ".")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Vocabulary size to build the model with "
                                                   "(default: tokenizer.vocab_size).")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="For the EMA timescale in epochs.")] = None,
    compare: Annotated[str | None, typer.Option(
        help="Comma-separated decay sets (e.g. hf,timm,nanogpt) to compare on this model instead: each one's "
             "decision per parameter, rows where they disagree marked. Allowed: " + ", ".join(DECAY_SETS) + ".",
    )] = None,
    hf_config: Annotated[Path | None, typer.Option(
        "--hf-config", help="A Hugging Face model config JSON (a model's config.json): the architecture is built "
                            "from it with random weights (nothing is downloaded) and its decay decisions under "
                            "transformers.Trainer's default (hf) and decaylab's sets are compared (--compare "
                            "picks the sets; --mode/--lambda/--decay-set add the full audit). Needs the hf extra.",
    )] = None,
) -> None:
    """Show which parameters are decayed, with what λ, and warn about known pitfalls (or compare decay sets)."""
    try:  # checked before the model is built, so a typo costs nothing
        compared = decay_set_names(compare) if compare is not None else None
    except ValueError as exc:
        raise UserError(f"--compare: {exc}") from None
    if hf_config is not None:
        for name, value in (("CONFIG", config), ("--set", sets), ("--vocab-size", vocab_size),
                            ("--steps-per-epoch", steps_per_epoch)):
            if value is not None:
                raise UserError(f"--hf-config: audits a Hugging Face architecture; {name} describes decaylab's own "
                                "models")
        _audit_hf(hf_config, compared, mode, weight_decay, decay_set)
        return

    from decaylab.config import build_run_config
    from decaylab.models import build_model, example_forward
    from decaylab.regularization import Regularization, compare_decay_sets

    cfg = build_run_config(config, sets, **{"regularization.mode": mode, "regularization.weight_decay": weight_decay,
                                            "regularization.decay_set": decay_set})
    model = build_model(cfg.model, vocab_size or cfg.tokenizer.vocab_size)
    if compared is not None:
        try:
            comparison = compare_decay_sets(model, compared)
        except ValueError as exc:  # e.g. a model whose no_weight_decay() returns something other than names
            raise UserError(f"--compare: {exc}") from None
        comparison.render(console=make_console())
        return
    reg = _regularization(Regularization, cfg)
    report = reg.audit(model, optimizer_name=cfg.train.optimizer, lr=cfg.train.lr,
                       steps=cfg.train.max_steps, steps_per_epoch=steps_per_epoch, example=example_forward(model))
    report.render(console=make_console())


@app.command()
def recommend(
    config: ConfigOpt = None,
    data: Annotated[str | None, typer.Option(help="Builtin dataset name or a TSV/JSONL file.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    max_examples: Annotated[int | None, typer.Option(help="Use at most this many training pairs.")] = None,
    points: Annotated[int, typer.Option(help="τ values from one epoch to the whole run (log-spaced).")] = 5,
    sets: SetOpt = None,
) -> None:
    """λ for EMA timescales τ from one epoch to the whole run (Wang & Aitchison 2025), from the run's step count."""
    from decaylab.config import build_run_config
    from decaylab.data.prepare import run_steps
    from decaylab.regularization.rules import DECAY_SCALING_RULES, DECAY_SCALINGS
    from decaylab.regularization.timescale import (
        GUIDELINE,
        RULE,
        SOURCE,
        guideline_taus,
        lambda_for_tau,
        tau_for_lambda,
        timescale_formula,
        timescale_problem,
    )

    _at_least("recommend", "--points", points, 2)
    cfg = build_run_config(config, sets, **{"data.name": data, "train.epochs": epochs, "train.lr": lr,
                                            "data.max_examples": max_examples})
    per_epoch_counts, total = run_steps(cfg)  # the data, tokenizer and batching of a run; no model
    per_epoch = sum(per_epoch_counts) / len(per_epoch_counts)
    run_epochs = total / per_epoch
    peak = cfg.train.lr
    taus = guideline_taus(run_epochs, points)
    echo = typer.echo
    low, high = min(per_epoch_counts), max(per_epoch_counts)
    spread = f"{low}" if low == high else f"{low}–{high}"  # bucketing cuts each epoch's batches a little differently
    echo(f"data {cfg.data.name}: {per_epoch:.6g} steps per epoch (mean of {len(per_epoch_counts)} epochs: "
         f"{spread} batches of ≤ {cfg.train.batch_tokens} padded tokens), {total} total steps = {run_epochs:.3g} "
         f"epochs; peak lr η_max = {peak:g}")
    echo(f"rule: {RULE}, at the peak lr ({SOURCE})")
    echo(f"guideline: {GUIDELINE} ({SOURCE}): τ from 1 to {run_epochs:.3g} epochs here")
    if run_epochs < 1:
        echo("note: the run is shorter than one epoch, so the guideline's two ends cross")
    from rich.table import Table

    table = Table(title="λ that gives each timescale τ (decoupled decay, per decay_scaling)")
    # a scoped scaling has the c_t of its unscoped one at the peak lr, where τ is defined: no column of its own
    shown = [s for s in DECAY_SCALINGS if DECAY_SCALING_RULES[s].scope == "all"]
    for column in ("τ (epochs)", "τ (steps)", *(f"λ, {s}: {timescale_formula(s)}" for s in shown)):
        table.add_column(column, justify="right")
    for tau in taus:
        lams = [lambda_for_tau(tau, per_epoch, scaling, peak) for scaling in shown]
        table.add_row(f"{tau:g}", f"{lams[0][1]:,.0f}", *(f"{lam:.4g}" for lam, _ in lams))
    make_console().print(table)
    reg = cfg.regularization
    problem = timescale_problem(reg.mode, cfg.train.optimizer, cfg.train.momentum)
    grid = f"log:{taus[0]:g}:{taus[-1]:g}:{len(taus)}"
    if problem is None:
        now = ""
        if reg.tau_epochs is None and reg.weight_decay > 0:
            now = (f"; its λ = {reg.weight_decay:g} gives τ = "
                   f"{tau_for_lambda(reg.weight_decay, per_epoch, reg.decay_scaling, peak):.3g} epochs")
        column = reg.decay_scaling if reg.decay_scaling in shown else "corrected (c_t = η_max at the peak everywhere)"
        echo(f"this config (mode {reg.mode}, decay_scaling {reg.decay_scaling}): its column is "
             f"{column}{now}; set τ itself with --set regularization.tau_epochs=T, or sweep it with "
             f"`decaylab sweep --taus {grid}`")
    else:
        echo(f"this config (mode {reg.mode}): τ does not apply ({problem}); sweep decoupled decay over this span "
             f"with `decaylab sweep --mode decoupled --taus {grid}`")


# What `audit --hf-config` compares by default: transformers.Trainer's set, then decaylab's own.
HF_AUDIT_SETS = ("hf", "no_bias_norm", "matrices", "matrices_no_embedding")


def _audit_hf(path: Path, compared: tuple[str, ...] | None, mode: str | None, weight_decay: float | None,
              decay_set: str | None) -> None:
    """`audit --hf-config`: the decay decisions of a Hugging Face architecture, checked against the Trainer's own."""
    try:
        from decaylab.integrations.transformers import hf_config_model, trainer_decay_names
    except ImportError as exc:
        raise UserError(f"--hf-config: {exc}") from None
    from decaylab.regularization import Regularization, compare_decay_sets

    model = hf_config_model(path)
    console = make_console()
    sets = compared or HF_AUDIT_SETS
    comparison = compare_decay_sets(model, sets)
    comparison.render(console=console)
    trainer = set(trainer_decay_names(model))
    hf = {row.name: row.decayed["hf"] for row in compare_decay_sets(model, "hf").rows if row.trainable}
    differ = sorted(name for name, decayed in hf.items() if decayed != (name in trainer))
    verdict = (f"matches transformers.Trainer.get_decay_parameter_names on this model: {len(trainer)} of "
               f"{len(hf)} parameter tensors decayed" if not differ else
               f"DIFFERS from transformers.Trainer.get_decay_parameter_names on {', '.join(differ[:5])}")
    console.print(f"{type(model).__name__} from {path}: decay set hf (transformers.Trainer's default) {verdict}",
                  markup=False, highlight=False)
    if mode is not None or weight_decay is not None or decay_set is not None:
        settings = {k: v for k, v in (("mode", mode), ("weight_decay", weight_decay), ("decay_set", decay_set))
                    if v is not None}
        _regularization(Regularization, _Settings(settings)).audit(model).render(console=console)


class _Settings:
    """What `_regularization` reads of a config, for settings given as flags alone."""

    def __init__(self, settings: dict) -> None:
        self.regularization = self
        self._settings = settings

    def model_dump(self) -> dict:
        return dict(self._settings)


def _regularization(factory, cfg):
    try:
        return factory(**cfg.regularization.rule_settings())
    except ValueError as exc:
        raise UserError(f"regularization: {exc}") from None


@data_app.command("list")
def data_list() -> None:
    """Builtin datasets: name, kind (pairs or text), size, languages, contents, licence."""
    from rich.table import Table

    from decaylab.data.builtin import builtin_datasets

    table = Table(title="builtin datasets")
    for column in ("name", "kind", "size", "language", "contents", "licence"):
        table.add_column(column)
    for info in sorted(builtin_datasets().values(), key=lambda info: (info.kind, info.name)):
        if info.kind == "text":
            table.add_row(info.name, info.kind, info.size, str(info.language), info.description, info.licence)
        else:
            table.add_row(info.name, info.kind, info.size, f"{info.source_lang} → {info.target_lang}",
                          f"{info.source_name} → {info.target_name}", info.licence)
    make_console().print(table)


@data_app.command("show")
def data_show(
    name: Annotated[str, typer.Argument(help="Builtin dataset name or a file.")],
    split: Annotated[str | None, typer.Option(help="train, valid or test (pair datasets; default train).")] = None,
    n: Annotated[int, typer.Option("-n", help="How many pairs or documents to show.")] = 5,
) -> None:
    """Split sizes and the first pairs of a split; for a text corpus, its size and first documents."""

    from rich.markup import escape

    from decaylab.config import DataConfig
    from decaylab.data.builtin import builtin_datasets, load_builtin_documents
    from decaylab.data.splits import load_splits

    console = make_console()
    info = builtin_datasets().get(name)
    if info is not None and info.kind == "text":
        if split is not None:
            raise UserError(f"--split: {name} is a text corpus; its splits are made when a model trains on it")
        documents = load_builtin_documents(name)
        console.print(f"builtin {name}: text, {info.size}, {info.language}, {info.licence}", markup=False,
                      highlight=False)
        for document in documents[:n]:  # the data's own text is never read as rich markup
            console.print(document + "\n", markup=False, highlight=False)
        return
    splits = load_splits(DataConfig(name=name))
    console.print(f"{splits.origin}: {splits.sizes()}  fingerprint {splits.fingerprint[:16]}", markup=False,
                  highlight=False)
    for pair in getattr(splits, _check_split(split or "train"))[:n]:
        console.print(f"[bold]src[/bold] {escape(pair.source)}\n[bold]tgt[/bold] {escape(pair.target)}\n",
                      markup=True, highlight=False)


def _check_split(split: str) -> str:
    if split not in ("train", "valid", "test"):
        raise UserError(f"--split: must be train, valid or test (got {split!r})")
    return split


@data_app.command("export")
def data_export(
    name: Annotated[str, typer.Argument(help="Builtin dataset name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (TSV, or text for a corpus).")],
    split: Annotated[str | None, typer.Option(help="train, valid or test (default: all pairs).")] = None,
) -> None:
    """Write a builtin dataset (or one split) as source<TAB>target TSV, or a text corpus as plain text."""
    from decaylab.config import DataConfig
    from decaylab.data.builtin import builtin_datasets, load_builtin, load_builtin_documents
    from decaylab.data.splits import load_splits
    from decaylab.files import atomic_write_text

    info = builtin_datasets().get(name)
    if info is not None and info.kind == "text":
        if split is not None:
            raise UserError(f"--split: {name} is a text corpus; its splits are made when a model trains on it")
        documents = load_builtin_documents(name)
        atomic_write_text(output, "\n\n".join(documents) + "\n")
        typer.echo(f"wrote {len(documents)} documents to {output}")
        return
    pairs = getattr(load_splits(DataConfig(name=name)), _check_split(split)) if split else load_builtin(name)
    atomic_write_text(output, "".join(f"{p.source}\t{p.target}\n" for p in pairs))
    typer.echo(f"wrote {len(pairs)} pairs to {output}")


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Sweep folder for the demo runs.")]
    = Path("runs/demo"),
    sets: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Compare λ = 0 with this config's λ "
                                                "instead (default: configs/demo_lm.yaml).")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds per λ (default: 5).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a demo already in --output.")] = False,
) -> None:
    """Train λ = 0 and λ > 0 with several seeds and print the paired comparison (about 7 minutes on 2 CPU cores)."""
    from decaylab.demo import DEMO_CONFIG, DEMO_SEEDS, run_demo

    run_demo(output, list(sets or []), quiet=quiet, config=config or DEMO_CONFIG, seeds=seeds or DEMO_SEEDS,
             overwrite=overwrite)


@app.command()
def sweep(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (the base of every "
                                                "trial).")] = None,
    strategy: Annotated[str | None, typer.Option(help="grid, cv, optuna or halving (default: grid).")] = None,
    lambdas: Annotated[str | None, typer.Option(help="log:LO:HI:N (log-spaced, inclusive) or a list 0,1e-4,1e-3 "
                                                "(default: log:1e-5:1e-1:9); λ = 0 is added unless --no-zero.")]
    = None,
    taus: Annotated[str | None, typer.Option(help="Sweep λ's EMA timescale τ in epochs instead of λ: log:LO:HI:N or "
                                             "a list 1,2,4 (not with --lambdas); each trial derives its λ from τ, "
                                             "the peak lr and its steps per epoch (see `decaylab recommend`); "
                                             "λ = 0 (τ = ∞) is added unless --no-zero.")] = None,
    mode: Annotated[str | None, typer.Option(help="Comma list of " + ", ".join(SWEEPABLE) + " (a rule that is not "
                                             "a mode, like l1, sweeps its own strength with mode none) (default: "
                                             "the config's mode, else decoupled).")] = None,
    dropout: Annotated[str | None, typer.Option(help="Comma list of dropout probabilities to sweep too.")] = None,
    folds: Annotated[int | None, typer.Option(help="cv: number of folds of the training split (default: 5).")]
    = None,
    rule: Annotated[str | None, typer.Option(help="min (best mean) or 1se (largest λ within one standard error "
                                             "of the best) (default: min).")] = None,
    metric: Annotated[str | None, typer.Option(help="loss (val nats/token), bleu or chrf (default: loss).")] = None,
    trials: Annotated[int | None, typer.Option(help="optuna: trials in the study (default: 30).")] = None,
    storage: Annotated[str | None, typer.Option(help="optuna: sqlite:///s.db, postgresql://user:pw@host/db (any "
                                                "SQLAlchemy URL) or journal:PATH (default: SWEEP/optuna.db).")]
    = None,
    study: Annotated[str | None, typer.Option(help="optuna: study name in the storage (default: the sweep "
                                              "folder's name); give the same one to every --join process.")]
    = None,
    join: Annotated[bool, typer.Option("--join", help="optuna: work on an existing study as an extra worker "
                                       "(no final step).")] = False,
    pruner: Annotated[str | None, typer.Option(help="optuna: median, halving or none (default: median).")] = None,
    heartbeat: Annotated[int | None, typer.Option(help="optuna: seconds between a running trial's heartbeats in a "
                                                  "database storage; a trial silent for twice that (its process "
                                                  "died) is retried (default: 60 on a server, off on SQLite; 0: "
                                                  "off).")] = None,
    seeds: Annotated[int | None, typer.Option(help="grid, cv: train every point (and fold) with this many seeds "
                                              "(--seed, --seed+1, ...; the data order stays fixed) and report "
                                              "mean ± SE over them.")] = None,
    workers: Annotated[int | None, typer.Option(help="Trials run in this many processes on this machine (default: "
                                                "1); with --backend ray, at most this many trials at once "
                                                "(default: as many as the cluster's CPUs fit).")] = None,
    backend: Annotated[str, typer.Option(help="local (this machine) or ray (Ray tasks across a cluster's nodes; "
                                         "needs `pip install decaylab[ray]`).")] = "local",
    address: Annotated[str | None, typer.Option(help="--backend ray: the cluster's HOST:PORT (as `ray start --head` "
                                                "printed it) or auto (RAY_ADDRESS, or the cluster this machine "
                                                "joined); left out, a local Ray instance is started.")] = None,
    vectorized: Annotated[bool, typer.Option("--vectorized", help="grid, cv, halving: train the points of each "
                                             "grid, fold or rung at once as one stacked model (fastest on a GPU; "
                                             "see docs/sweeps.md).")] = False,
    replicas: Annotated[int | None, typer.Option(help="--vectorized: at most this many replicas per stack "
                                                 "(bounds memory; default: all points).")] = None,
    eta: Annotated[int | None, typer.Option(help="halving: keep the best 1/eta per rung (default: 3).")] = None,
    min_epochs: Annotated[int | None, typer.Option(help="halving: epochs of the first rung (default: "
                                                   "epochs / eta^rungs).")] = None,
    no_zero: Annotated[bool, typer.Option("--no-zero", help="Do not add λ = 0 (the unregularized baseline).")]
    = False,
    no_final: Annotated[bool, typer.Option("--no-final", help="Skip the final model and the test evaluation.")]
    = False,
    data: Annotated[str | None, typer.Option(help="Builtin dataset name or a TSV/JSONL file.")] = None,
    preset: Annotated[str | None, typer.Option(help="Model size preset: tiny, small, base.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs of each trial.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam, adamw or sgd.")] = None,
    l1: Annotated[float | None, typer.Option(help="L1 strength λ₁ kept fixed (unless --mode l1).")] = None,
    decay_set: Annotated[str | None, typer.Option(help=", ".join(DECAY_SETS) + ".")]
    = None,
    max_examples: Annotated[int | None, typer.Option(help="Use at most this many training pairs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (also fixes the CV folds).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 or bf16 (autocast).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override any key: section.key=value "
                                                   "(repeatable).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Sweep folder (default: "
                                                "sweeps/NAME).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this sweep folder; finished trials are not "
                                                "recomputed.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the sweep that --output already holds "
                                            "(its files are removed first; other files, and a study in an "
                                            "external --storage, stay).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
    objective: Annotated[str | None, typer.Option(help="Sweep over your own training function instead of "
                                                  "decaylab's models: MODULE:FUNCTION or FILE.py:FUNCTION, called "
                                                  "with a Trial per trial (docs/python.md).")] = None,
    examples: Annotated[int | None, typer.Option(help="--objective with cv: how many training examples the folds "
                                                 "split (the Trial hands out their indices).")] = None,
    param: Annotated[list[str] | None, typer.Option(help="--objective: NAME=VALUE handed to every trial as "
                                                    "trial.params (repeatable).")] = None,
) -> None:
    """Choose λ on evidence: grid, k-fold CV, Optuna or successive halving; writes sweeps/NAME/ and prints the table."""
    from decaylab.config import build_run_config, flag_overrides
    from decaylab.sweep.api import sweep as run_sweep

    common = {"strategy": strategy, "lambdas": lambdas, "modes": mode, "dropouts": dropout, "folds": folds,
              "rule": rule, "metric": metric, "trials": trials, "storage": storage, "study": study, "join": join,
              "workers": workers, "eta": eta, "min_epochs": min_epochs, "pruner": pruner,
              "no_zero": no_zero or None, "resume": resume, "final": not no_final, "quiet": quiet, "seeds": seeds,
              "overwrite": overwrite, "heartbeat": heartbeat, "backend": backend, "address": address}
    if objective is not None or (resume is not None and _objective_sweep(resume)):
        for flag, value in (("--config", config), ("--data", data), ("--preset", preset), ("--lr", lr),
                            ("--optimizer", optimizer), ("--max-examples", max_examples), ("--device", device),
                            ("--precision", precision), ("--vectorized", vectorized or None),
                            ("--replicas", replicas)):
            if value is not None:
                raise UserError(f"{flag}: configures decaylab's own trainer; an --objective trains its own model "
                                "(hand it your settings with --param NAME=VALUE)")
        if output is None and resume is None:
            import time

            output = Path("sweeps") / f"objective-{strategy or 'grid'}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            result = run_sweep(objective=objective, examples=examples, epochs=epochs, seed=seed,
                               regularization=_objective_regularization(decay_set, l1, sets),
                               params=_params(param), output=output, **common)
        except KeyboardInterrupt:
            typer.echo(f"interrupted; continue with `decaylab sweep --resume {resume or output}`", err=True)
            raise SystemExit(130) from None
        _finish_sweep(result, join)
        return
    for flag, value in (("--examples", examples), ("--param", param)):
        if value is not None:
            raise UserError(f"{flag}: goes with --objective (a sweep over your own training function)")

    flags = {"data.name": data, "model.preset": preset, "train.epochs": epochs, "train.lr": lr,
             "train.optimizer": optimizer, "regularization.l1": l1, "regularization.decay_set": decay_set,
             "data.max_examples": max_examples, "seed": seed, "train.device": device, "train.precision": precision}
    if resume is not None and config is None:
        # Resuming: the flags given (if any) go on top of the stored config; any change is then refused.
        base, overrides = None, flag_overrides(**flags) + list(sets or [])
    else:
        base, overrides = build_run_config(config, sets, **flags), []
    if output is None and resume is None:
        import time

        stem = config.stem if config is not None else "sweep"
        output = Path("sweeps") / f"{stem}-{strategy or 'grid'}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = run_sweep(base, overrides=overrides, strategy=strategy, lambdas=lambdas, modes=mode,
                           dropouts=dropout, folds=folds, rule=rule, metric=metric, trials=trials, storage=storage,
                           study=study, join=join, workers=workers, eta=eta, min_epochs=min_epochs, pruner=pruner,
                           no_zero=no_zero or None, output=output, resume=resume, final=not no_final, quiet=quiet,
                           vectorized=vectorized, replicas=replicas, seeds=seeds, overwrite=overwrite, taus=taus,
                           heartbeat=heartbeat, backend=backend, address=address)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; continue with `decaylab sweep --resume {resume or output}`", err=True)
        raise SystemExit(130) from None
    _finish_sweep(result, join)


def _finish_sweep(result, join: bool) -> None:
    """Print the table and write the sweep's report (a --join worker leaves the report to the leader)."""
    from decaylab.report import write_report
    from decaylab.sweep.render import render_table

    render_table(result.summary, f"sweep {result.path} ({result.summary['strategy']})")
    typer.echo(f"sweep folder {result.path}")
    if not join:  # a --join worker leaves the report to the process that chooses λ
        from decaylab.runfolder.lock import FolderLock

        with FolderLock(result.path):  # written as the sweep folder's owner, as the sweep was
            typer.echo(f"report {write_report(result.path)}")


def _objective_sweep(folder: Path) -> bool:
    """True when `folder` holds a sweep over an objective (its sweep.yaml names one)."""
    from decaylab.sweep.store import SweepStore

    return "objective" in SweepStore(folder).read_record()


def _objective_regularization(decay_set: str | None, l1: float | None, sets: list[str] | None) -> dict | None:
    """The base regularization an objective's trials start from: --decay-set, --l1, --set regularization.*=…."""
    from decaylab.config import parse_override

    settings: dict = {}
    for text in sets or []:
        path, value = parse_override(text)
        if len(path) != 2 or path[0] != "regularization":
            raise UserError(f"--set {text}: with --objective, --set takes regularization.FIELD=VALUE only (your "
                            "objective's own settings go in --param NAME=VALUE)")
        settings[path[1]] = value
    settings.update({k: v for k, v in (("decay_set", decay_set), ("l1", l1)) if v is not None})
    return settings or None


def _params(items: list[str] | None) -> dict | None:
    """--param NAME=VALUE (values read as YAML: numbers, booleans, lists) as a dict."""
    from decaylab.config import parse_override

    params: dict = {}
    for text in items or []:
        path, value = parse_override(text)
        params[".".join(path)] = value
    return params or None


# Commands that live beside their package register here (their modules import only typer at the top).
from decaylab.report.command import report as _report_command  # noqa: E402

app.command("report")(_report_command)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    # under torchrun, rank 0 speaks for the job; another rank reports only its own trouble (RankError)
    speaks = (os.environ.get("RANK", "0") or "0") == "0"
    try:
        problem = _ranks_problem(sys.argv[1:])
        if problem is not None:
            raise UserError(problem)
        app()
    except UserError as exc:
        if speaks or isinstance(exc, RankError):
            typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if speaks:
            typer.echo("interrupted; a run can be continued with `decaylab train --resume RUN`", err=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
