"""What the models do to the text: the same validation sources translated by each compared model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from decaylab.errors import DamagedFile, UserError

# Sources longer than this many words make the samples table hard to read; shorter ones are preferred.
READABLE_WORDS = 40


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


def translate_samples(models: list[tuple[str, Path]], n: int = 5) -> Samples:
    """Greedy translations of the same n validation sources by every (label, run folder) given."""
    if not models or n <= 0:
        return Samples(note="no model to translate with")
    try:
        from sacrebleu.metrics import CHRF

        from decaylab.data.splits import load_splits
        from decaylab.generation import translate
        from decaylab.runfolder.load import load_trained

        first = load_trained(models[0][1], "best", device="cpu", option="")
        pairs = pick_pairs(load_splits(first.config.data).valid, n)
        if not pairs:
            return Samples(note="the validation split is empty")
        samples = Samples(sources=[p.source for p in pairs], references=[p.target for p in pairs])
        chrf = CHRF()
        for index, (label, run) in enumerate(models):
            trained = first if index == 0 else load_trained(run, "best", device="cpu", option="")
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
