"""`decaylab evaluate`: a trained run's loss, perplexity, BLEU and chrF (pairs) or bits per character (a language
model's text), and the generalization gap, on a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decaylab.data.io import Pair
from decaylab.data.prepare import encode_pairs, encode_split, eval_subset
from decaylab.data.splits import Splits, load_splits
from decaylab.errors import DamagedFile, UserError
from decaylab.evaluation.metrics import bits_per_character, corpus_loss, perplexity, text_metrics
from decaylab.files import atomic_write_json, read_json_object
from decaylab.generation import translate
from decaylab.generation.limits import input_token_limit
from decaylab.runfolder.load import TrainedRun, load_trained

SPLITS = ("train", "valid", "test")


def result_line(result: dict[str, Any]) -> str:
    """An `evaluate_run` result in a line: loss and perplexity, then BLEU and chrF (pairs) or bits per character."""
    text = f"loss {result['loss']:.4f}, ppl {result['ppl']:.2f}"
    if "bits_per_character" in result:
        text += f", {result['bits_per_character']:.4f} bits per character"
    else:
        text += f", BLEU {result['bleu']:.2f}, chrF {result['chrf']:.2f}"
    return text + f", gap {result['gap']:+.4f}"


def evaluate_run(run_dir: Path, split: str = "test", beam: int | None = None, checkpoint: str = "best",
                 max_examples: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Evaluate one split of a run and merge the result into the run's eval.json (keyed by split)."""
    if split not in SPLITS:
        raise UserError(f"--split: must be one of {', '.join(SPLITS)} (got {split!r})")
    return evaluate_trained(load_trained(run_dir, checkpoint, device), split, beam, checkpoint, max_examples)


def evaluate_trained(run: TrainedRun, split: str = "test", beam: int | None = None, checkpoint: str = "best",
                     max_examples: int | None = None) -> dict[str, Any]:
    """`evaluate_run` of a run already loaded (its `checkpoint` names the weights it holds, for eval.json)."""
    if split not in SPLITS:
        raise UserError(f"--split: must be one of {', '.join(SPLITS)} (got {split!r})")
    splits = load_splits(run.config.data)
    try:
        meta = read_json_object(run.paths.meta) or {}
    except DamagedFile as exc:
        raise exc.saying("evaluate compares the data with the fingerprint it records; generate still works") from None
    try:  # read before the work: a damaged one would be replaced, with the results of the other splits lost
        existing = read_json_object(run.paths.eval) or {}
    except DamagedFile as exc:
        raise exc.saying("it holds only earlier `decaylab evaluate` results: remove it and evaluate again") from None
    recorded = (meta.get("data") or {}).get("fingerprint")
    pairs = getattr(splits, split)
    if max_examples:
        pairs = pairs[:max_examples]
    if not pairs:
        raise UserError(f"{run.config.data.name}: the {split} split is empty")
    precision = run.config.train.precision
    if run.config.data.kind == "text":
        result = _language_model(run, splits, pairs, precision)
        result.update({"split": split, "checkpoint": checkpoint, "data_fingerprint": splits.fingerprint,
                       "fingerprint_matches_training": recorded == splits.fingerprint if recorded else None})
        existing[split] = result
        atomic_write_json(run.paths.eval, existing)
        return result
    loss = corpus_loss(run.model, encode_pairs(run.tokenizer, pairs), run.device, precision=precision)
    train_pairs = [splits.train[i] for i in eval_subset(len(splits.train), len(pairs), run.config.order_seed)]
    train_loss = corpus_loss(run.model, encode_pairs(run.tokenizer, train_pairs), run.device, precision=precision)
    gen = run.config.generation
    beam = beam or gen.beam
    limit, _ = input_token_limit(run.config, meta)
    cut: list[int] = []
    hypotheses = translate(run.model, run.tokenizer, [p.source for p in pairs], method="beam" if beam > 1 else "greedy",
                           beam=beam, length_penalty=gen.length_penalty, max_len_ratio=gen.max_len_ratio,
                           max_len_extra=gen.max_len_extra, device=run.device, max_input_tokens=limit,
                           on_cut=lambda index, tokens: cut.append(index))
    scores = text_metrics(hypotheses, [p.target for p in pairs])
    result = {
        "split": split, "checkpoint": checkpoint, "examples": len(pairs), "beam": beam,
        "loss": loss, "ppl": perplexity(loss), "train_loss": train_loss, "gap": loss - train_loss,
        **scores.to_dict(),
        "max_input_tokens": limit, "inputs_cut": len(cut),  # sources longer than the limit, decoded from a prefix
        "data_fingerprint": splits.fingerprint,
        "fingerprint_matches_training": recorded == splits.fingerprint if recorded else None,
    }
    existing[split] = result
    atomic_write_json(run.paths.eval, existing)
    return result


def _language_model(run: TrainedRun, splits: Splits, documents: list[Pair], precision: str) -> dict[str, Any]:
    """A language model on a split's documents: loss, perplexity and bits per character, and the gap to an
    equally sized sample of training documents."""
    config = run.config
    data = encode_split(config, run.tokenizer, documents)
    loss = corpus_loss(run.model, data, run.device, precision=precision)
    sample = [splits.train[i] for i in eval_subset(len(splits.train), len(documents), config.order_seed)]
    train = encode_split(config, run.tokenizer, sample)
    train_loss = corpus_loss(run.model, train, run.device, precision=precision)
    return {
        "documents": len(documents), "tokens": data.tokens, "characters": data.characters,
        "loss": loss, "ppl": perplexity(loss), "bits_per_character": bits_per_character(loss, data.tokens,
                                                                                          data.characters),
        "train_loss": train_loss, "gap": loss - train_loss,
        "train_bits_per_character": bits_per_character(train_loss, train.tokens, train.characters),
        "block_size": config.data.block_size,
    }
