"""What every trial of a sweep shares: the splits, one tokenizer and one set of initial weights.

One tokenizer (trained on the training split, as the final model's is) gives every trial and fold the same
vocabulary, hence the same parameter shapes, so one initial state dict serves all of them: a difference
between two λ (or two folds) is never a difference of initialisation. Both are written to `shared/` so that
worker processes and resumed sweeps load exactly the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from decaylab.config import Config
from decaylab.data.splits import Splits, load_splits
from decaylab.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from decaylab.device import seed_everything
from decaylab.errors import DamagedFile, UserError
from decaylab.models import build_model
from decaylab.runfolder.checkpoint import model_tensors, read_tensors, write_tensors

TOKENIZER, INIT = "tokenizer.json", "init.safetensors"


@dataclass
class Shared:
    """Loaded shared resources of one sweep."""

    splits: Splits
    tokenizer: Tokenizer
    init: dict[str, torch.Tensor]  # drawn with the base seed
    folder: Path | None = None
    base_seed: int | None = None
    seed_inits: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def init_for(self, seed: int | None) -> dict[str, torch.Tensor]:
        """The initial weights of a seed repeat (None or the base seed: `init`), loaded once per process."""
        if seed is None or seed == self.base_seed:
            return self.init
        if seed not in self.seed_inits:
            assert self.folder is not None
            path = self.folder / seed_init_name(seed)
            if not path.is_file():
                raise UserError(f"{path}: missing (the initial weights of seed {seed}); resume the sweep with "
                                "`decaylab sweep --resume`, which draws them")
            try:
                self.seed_inits[seed] = read_tensors(path)
            except DamagedFile as exc:
                raise exc.saying(SHARED_NEEDED) from None
        return self.seed_inits[seed]


def seed_init_name(seed: int) -> str:
    """File name under shared/ of seed `seed`'s initial weights."""
    return f"init-seed{seed}.safetensors"


def prepare_seed_inits(folder: Path, base: Config, tokenizer: Tokenizer, seeds: list[int]) -> None:
    """Draw each seed repeat's initial weights as a single run with that seed would (kept if they exist); the
    base seed's are `init.safetensors` already."""
    for seed in seeds:
        path = folder / seed_init_name(seed)
        if seed != base.seed and not path.is_file():
            _draw_init(path, base, tokenizer, seed)


def _draw_init(path: Path, base: Config, tokenizer: Tokenizer, seed: int) -> None:
    seed_everything(seed)  # the same draw a single run with this seed would make
    model = build_model(base.model, tokenizer.get_vocab_size())
    write_tensors(path, model_tensors(model))


_CACHE: dict[str, Shared] = {}  # per process: a worker loads the data and weights once, not once per trial


SHARED_NEEDED = ("every trial of the sweep was trained from it: restore it from a copy of the sweep folder, or "
                 "start a new sweep")


def prepare_shared(folder: Path, base: Config, splits: Splits) -> Shared:
    """Train the tokenizer and draw the initial weights once (kept when they already exist, e.g. on resume)."""
    try:
        return _prepare_shared(folder, base, splits)
    except DamagedFile as exc:
        raise exc.saying(SHARED_NEEDED) from None


def _prepare_shared(folder: Path, base: Config, splits: Splits) -> Shared:
    folder.mkdir(parents=True, exist_ok=True)
    tok_path, init_path = folder / TOKENIZER, folder / INIT
    if not tok_path.is_file():
        texts = [p.source for p in splits.train] + [p.target for p in splits.train]
        tokenizer = train_tokenizer(texts, base.tokenizer)
        save_tokenizer(tokenizer, tok_path)
    tokenizer = load_tokenizer(tok_path)
    if not init_path.is_file():
        _draw_init(init_path, base, tokenizer, base.seed)
    shared = Shared(splits, tokenizer, read_tensors(init_path), folder, base.seed)
    _CACHE[str(folder.resolve())] = shared
    return shared


def load_shared(folder: Path, base: Config, fingerprint: str) -> Shared:
    """The shared resources of a sweep, loaded once per process; the data must still be what it was."""
    key = str(folder.resolve())
    if key not in _CACHE:
        splits = load_splits(base.data)
        if splits.fingerprint != fingerprint:
            raise UserError(f"{base.data.name}: the data changed since this sweep started (fingerprint "
                            f"{splits.fingerprint[:12]} != {fingerprint[:12]})")
        try:
            _CACHE[key] = Shared(splits, load_tokenizer(folder / TOKENIZER), read_tensors(folder / INIT), folder,
                                 base.seed)
        except DamagedFile as exc:
            raise exc.saying(SHARED_NEEDED) from None
    return _CACHE[key]
