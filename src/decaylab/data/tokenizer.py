"""A BPE vocabulary (HF `tokenizers`) shared by source and target, trained on the training split only."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from decaylab.config import TokenizerConfig
from decaylab.errors import DamagedFile, UserError
from decaylab.files import atomic_write_text, not_found

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train a Metaspace BPE tokenizer whose ids 0..3 are pad, bos, eos, unk."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=SPECIALS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    assert [tokenizer.token_to_id(t) for t in SPECIALS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID]
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a run's saved tokenizer; a damaged file is a DamagedFile saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{not_found(path, 'tokenizer file')} (is this a decaylab run folder?)")
    try:
        size = path.stat().st_size
        tokenizer = Tokenizer.from_file(str(path)) if size else None
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        reason = f"truncated: {first}" if "EOF while parsing" in first else f"not a valid tokenizer file: {first}"
        raise DamagedFile(path, reason) from None
    if tokenizer is None:
        raise DamagedFile(path, "empty")
    if [tokenizer.token_to_id(t) for t in SPECIALS] != [PAD_ID, BOS_ID, EOS_ID, UNK_ID]:
        raise DamagedFile(path, f"not a decaylab tokenizer: ids 0-3 are not {' '.join(SPECIALS)}")
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """Write a tokenizer atomically (a full disk is a WriteError and leaves the old file as it was)."""
    text = tokenizer.to_str(pretty=True)
    atomic_write_text(Path(path), text)


def encode(tokenizer: Tokenizer, texts: list[str], add_bos: bool = False) -> list[list[int]]:
    """Token ids for each text, ending with EOS (and starting with BOS when asked)."""
    prefix = [BOS_ID] if add_bos else []
    return [prefix + enc.ids + [EOS_ID] for enc in tokenizer.encode_batch(texts)]


def decode(tokenizer: Tokenizer, ids: list[list[int]]) -> list[str]:
    """Texts from token ids, dropping specials and stopping at EOS."""
    cleaned = []
    for seq in ids:
        out = []
        for token in seq:
            if token == EOS_ID:
                break
            if token >= len(SPECIALS) or token == UNK_ID:
                out.append(token)
        cleaned.append(out)
    return tokenizer.decode_batch(cleaned, skip_special_tokens=False)
