"""A tiny GPT-2 trained with Hugging Face `transformers.Trainer`, its weight decay chosen by 3-fold CV.

    python examples/hf_gpt2_cv.py --output sweeps/hf-gpt2

The model is built from a `GPT2Config` with random weights (nothing is downloaded); its tokenizer is decaylab's
own BPE trained on the training documents; the data are the first paragraphs of the builtin `austen-novels`
corpus. `decaylab.sweep` runs the CV over the training documents (every λ and fold a `transformers.Trainer` run
through `decaylab.integrations.transformers.trainer_objective`), picks λ by the 1-SE rule, trains the chosen λ on
all training documents, scores it once on the test documents and writes the report (`report.html`).
A killed run continues with `decaylab sweep --resume OUTPUT`.

At the defaults (400 paragraphs, 4 epochs, λ ∈ {0, 0.1, 1}: ten Trainer runs) it took 8–10 minutes on a shared
2-core CPU; `--documents 60 --vocab 128 --epochs 1 --lambdas 1` (what tests/test_examples.py runs) takes well under
a minute.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

try:
    import decaylab
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import decaylab

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from decaylab.config import TokenizerConfig
from decaylab.data.builtin import load_builtin_documents
from decaylab.data.tokenizer import EOS_ID, PAD_ID, train_tokenizer
from decaylab.integrations.transformers import trainer_objective
from decaylab.regularization import Regularization
from decaylab.report import write_report

CORPUS = "austen-novels"
BLOCK = 64  # tokens per training sequence
# The objective as FILE.py:FUNCTION, so that `decaylab sweep --resume` finds it again from any folder.
OBJECTIVE = f"{Path(__file__).resolve()}:gpt2"


@functools.cache
def corpus(documents: int) -> tuple[list[str], list[str], list[str]]:
    """The first `documents` paragraphs of the corpus that have at least 20 words, split 80/10/10 in order."""
    paragraphs = [p for p in load_builtin_documents(CORPUS) if len(p.split()) >= 20][:documents]
    cut, end = int(0.8 * len(paragraphs)), int(0.9 * len(paragraphs))
    return paragraphs[:cut], paragraphs[cut:end], paragraphs[end:]


@functools.cache
def tokenizer(documents: int, vocab: int):
    """decaylab's BPE (ids 0..3: pad, bos, eos, unk) trained on the training documents only."""
    return train_tokenizer(corpus(documents)[0], TokenizerConfig(vocab_size=vocab, min_frequency=2))


def blocks(texts: list[str], documents: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    """The documents joined by EOS and cut into BLOCK-token sequences (the last one padded, its padding ignored)."""
    ids = [EOS_ID]
    for encoding in tokenizer(documents, vocab).encode_batch(texts):
        ids += encoding.ids + [EOS_ID]
    examples = []
    for start in range(0, len(ids) - 1, BLOCK):
        chunk = ids[start : start + BLOCK]
        pad = BLOCK - len(chunk)
        examples.append({"input_ids": torch.tensor(chunk + [PAD_ID] * pad),
                         "attention_mask": torch.tensor([1] * len(chunk) + [0] * pad),
                         "labels": torch.tensor(chunk + [-100] * pad)})  # -100: not scored
    return examples


@trainer_objective
def gpt2(trial: decaylab.Trial) -> dict:
    """One trial: a fresh tiny GPT-2 (the sweep seeded torch, so every λ starts from the same weights)."""
    documents, vocab = int(trial.params["documents"]), int(trial.params["vocab"])
    train_docs, valid_docs, test_docs = corpus(documents)
    train, held_out = trial.split(train_docs)  # CV: all but one fold, and that fold
    config = GPT2Config(vocab_size=tokenizer(documents, vocab).get_vocab_size(), n_positions=BLOCK, n_embd=48,
                        n_layer=2, n_head=2, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    args = TrainingArguments(output_dir=str(trial.path / "hf"), per_device_train_batch_size=16,
                             per_device_eval_batch_size=32, learning_rate=float(trial.params["lr"]),
                             lr_scheduler_type="linear", warmup_steps=5, eval_strategy="epoch", use_cpu=True,
                             dataloader_num_workers=0)
    return {"model": GPT2LMHeadModel(config), "args": args,
            "train_dataset": blocks(train, documents, vocab),
            "eval_dataset": blocks(held_out if held_out is not None else valid_docs, documents, vocab),
            "test_dataset": blocks(test_docs, documents, vocab)}


def main(argv: list[str] | None = None) -> decaylab.SweepResult:
    """Run the CV sweep and write its report; returns the sweep's result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="sweeps/hf-gpt2", help="sweep folder")
    parser.add_argument("--documents", type=int, default=400, help="paragraphs of the corpus to use")
    parser.add_argument("--vocab", type=int, default=512, help="BPE vocabulary size")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lambdas", default="0.1,1", help="λ values besides 0 (decoupled, AdamW)")
    parser.add_argument("--overwrite", action="store_true", help="replace a sweep already in --output")
    options = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    result = decaylab.sweep(
        objective=OBJECTIVE, strategy="cv", folds=3, examples=len(corpus(options.documents)[0]),
        lambdas=options.lambdas, modes="decoupled", rule="1se", epochs=options.epochs, seed=0,
        # Hugging Face's own decay set: no biases, no LayerNorm weights (decay_set="hf" reproduces
        # Trainer.get_decay_parameter_names exactly)
        regularization=Regularization(mode="decoupled", weight_decay=0.0, decay_set="hf"),
        params={"documents": options.documents, "vocab": options.vocab, "lr": options.lr},
        output=options.output, overwrite=options.overwrite, quiet=False)
    report = write_report(result.path)
    for row in result.table:
        mark = "*" if (row["mode"], row["lambda"]) == (result.best["mode"], result.best["lambda"]) else " "
        print(f"{mark} {row['mode']:>9} λ = {row['lambda']:<5g} val loss {row['mean']:.4f} ± {row['se'] or 0:.4f}"
              f" ({row['n_folds']} folds)")
    test = (result.final or {}).get("test") or {}
    print(f"chosen λ = {result.best['lambda']:g} ({result.best['rule']}); final model's test loss "
          f"{test.get('loss', float('nan')):.4f}; report {report}; {time.perf_counter() - started:.0f} s")
    return result


if __name__ == "__main__":
    main()
