"""What the models do to the text: the same validation sources translated by each compared model, or (language
models) the same prompts, the opening words of validation documents, continued by each model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from decaylab.config import Config
from decaylab.errors import DamagedFile, UserError

# Sources longer than this many words make the samples table hard to read; shorter ones are preferred.
READABLE_WORDS = 40
# A language model's sample: the document's first PROMPT_WORDS words as the prompt, its next CONTINUATION_WORDS
# words as the reference the continuations are compared with.
PROMPT_WORDS, CONTINUATION_WORDS = 8, 30


@dataclass
class Samples:
    """Sources, references and one output column per model (with sentence chrF), or why there are none."""

    labels: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    outputs: list[list[str]] = field(default_factory=list)  # [model][sentence]
    chrf: list[list[float]] = field(default_factory=list)  # [model][sentence]
    corpus_chrf: list[float] = field(default_factory=list)  # [model], over the shown sentences
    note: str = ""
    language_model: bool = False  # sources are prompts, references the documents' real continuations

    @property
    def rows(self) -> list[dict[str, object]]:
        """One dict per sentence: source, reference and [(label, output, chrF)] per model."""
        return [{"source": src, "reference": ref,
                 "outputs": [(self.labels[m], self.outputs[m][i], self.chrf[m][i]) for m in range(len(self.labels))]}
                for i, (src, ref) in enumerate(zip(self.sources, self.references, strict=True))]


def pick_pairs(pairs: list, n: int) -> list:
    """The first n validation pairs of readable length (the first n pairs when too few are short)."""
    short = [p for p in pairs if len(p.source.split()) <= READABLE_WORDS]
    return (short if len(short) >= n else pairs)[:n]


def prompt_pairs(documents: list, n: int) -> list[tuple[str, str]]:
    """(prompt, real continuation) from the first n validation documents long enough to have both."""
    pairs = []
    for doc in documents:
        words = doc.target.split()
        if len(words) > PROMPT_WORDS + 1:
            rest = words[PROMPT_WORDS : PROMPT_WORDS + CONTINUATION_WORDS]
            pairs.append((" ".join(words[:PROMPT_WORDS]), " ".join(rest)))
        if len(pairs) == n:
            break
    return pairs


def translate_samples(models: list[tuple[str, Path]], n: int = 5) -> Samples:
    """Greedy translations of the same n validation sources by every (label, run folder) given."""
    if not models or n <= 0:
        return Samples(note="no model to translate with")
    from decaylab.report.collect import run_trained_by

    outside = next((name for _, run in models if (name := run_trained_by(run))), None)
    if outside is not None:
        return Samples(note=f"the models were trained by {outside}, whose text generation is its own: no samples "
                            "(the curves, norms and audit are from its reports and model)")
    try:
        from sacrebleu.metrics import CHRF

        from decaylab.data.splits import load_splits
        from decaylab.generation import continue_prompts, translate
        from decaylab.runfolder.load import load_trained

        first = load_trained(models[0][1], "best", device="cpu", option="")
        language_model = first.config.data.kind == "text"
        if language_model:
            pairs = prompt_pairs(load_splits(first.config.data).valid, n)
            sources, references = [p for p, _ in pairs], [r for _, r in pairs]
        else:
            chosen = pick_pairs(load_splits(first.config.data).valid, n)
            sources, references = [p.source for p in chosen], [p.target for p in chosen]
        if not sources:
            return Samples(note="the validation split is empty" if not language_model else
                           f"no validation document has more than {PROMPT_WORDS + 1} words to prompt with")
        samples = Samples(sources=sources, references=references, language_model=language_model)
        chrf = CHRF()
        for index, (label, run) in enumerate(models):
            trained = first if index == 0 else load_trained(run, "best", device="cpu", option="")
            if language_model:  # the continuation alone, greedy, about as long as the reference
                whole = continue_prompts(trained.model, trained.tokenizer, sources, max_new_tokens=48,
                                         max_context=_context(trained.config))
                hyps = [text[len(prompt):].strip() for prompt, text in zip(sources, whole, strict=True)]
            else:
                hyps = translate(trained.model, trained.tokenizer, samples.sources, method="greedy", device="cpu")
            samples.labels.append(label)
            samples.outputs.append(hyps)
            samples.chrf.append([chrf.sentence_score(h, [r]).score for h, r in zip(hyps, samples.references,
                                                                                  strict=True)])
            samples.corpus_chrf.append(chrf.corpus_score(hyps, [samples.references]).score)
        return samples
    except DamagedFile:  # a damaged run file is an error of its own (which file, what still works)
        raise
    except (UserError, OSError, RuntimeError, ValueError, KeyError) as exc:
        return Samples(note=f"sample translations unavailable: {exc}")


def _context(config: Config) -> int | None:
    """The longest sequence a language model takes (learned positions), else None."""
    return config.model.max_positions if config.model.positions == "learned" else None
