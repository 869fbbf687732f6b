"""Run configuration: pydantic models for every section, YAML load/save and `--set` overrides."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from decaylab.errors import UserError
from decaylab.files import not_found
from decaylab.regularization.rules import (
    DECAY_SCALINGS,
    DECAY_SETS,
    MODES,
    WEIGHT_DECAY_SCHEDULE_NAMES,
    check_settings,
)
from decaylab.regularization.timescale import timescale_problem


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number (got NaN or infinity)")
        return value


class DataConfig(Section):
    """Where the pairs (or, for a language model, the documents) come from and which ones are kept."""

    name: str = Field("bible-en-es", description="builtin dataset name, or a TSV/JSONL pair file, or (model.arch="
                                                "decoder) a .txt/.txt.gz/.txt.xz or JSONL {\"text\": ...} file")
    kind: Literal["pairs", "text"] | None = Field(
        None, description="pairs (source/target examples) or text (documents for a language model); default: "
                          "text for model.arch=decoder, pairs otherwise")
    block_size: int = Field(128, ge=2, le=1_000_000, description="tokens per training block of a language model "
                                                                 "(model.arch=decoder)")
    valid_file: str | None = Field(None, description="separate validation file (then `name` is the train file)")
    test_file: str | None = Field(None, description="separate test file")
    format: Literal["auto", "tsv", "jsonl"] = "auto"
    max_examples: int | None = Field(None, ge=1, description="keep at most this many training pairs")
    max_valid_examples: int | None = Field(None, ge=1)
    max_test_examples: int | None = Field(None, ge=1)
    min_words: int = Field(1, ge=1, description="drop pairs with a side shorter than this (whitespace words)")
    max_words: int | None = Field(None, ge=1, description="drop pairs with a side longer than this")
    max_line_chars: int = Field(10_000, ge=1, description="a longer input line is a bad line")
    split: tuple[float, float, float] = Field((0.90, 0.05, 0.05), description="train/valid/test shares")
    on_bad_line: Literal["error", "skip"] = "error"

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(share < 0 for share in value) or abs(sum(value) - 1.0) > 1e-6 or value[0] <= 0:
            raise ValueError(f"must be three non-negative shares summing to 1 with train > 0 (got {value})")
        return value


class TokenizerConfig(Section):
    """One byte-level BPE vocabulary shared by source and target, trained on the training split."""

    vocab_size: int = Field(8000, ge=64, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = False


class ModelSection(Section):
    """What every architecture's `model` section has; each architecture is a subclass (a member of `ModelConfig`).

    A member narrows `arch` to its own name (a Literal with that default), narrows `preset` to the names of its
    `PRESETS` (sizes filled in where the config gives none), and adds its own fields.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    arch: str
    preset: str | None = None
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    tie_embeddings: bool = True
    output: Literal["full", "adaptive"] = Field(
        "full", description="output layer: the full softmax, or an adaptive softmax over frequency-ranked tokens "
                            "(nn.AdaptiveLogSoftmaxWithLoss; exactly normalized, cheaper; needs tie_embeddings=false)")
    adaptive_cutoffs: list[int] | None = Field(
        None, description="frequency ranks where the adaptive softmax's clusters start (default: V/4 and V/2)")

    @model_validator(mode="after")
    def _adaptive_output_is_untied(self) -> ModelSection:
        if self.output == "adaptive" and self.tie_embeddings:
            raise ValueError("model.output=adaptive has its own output projections and cannot be tied to the target "
                             "embedding: set model.tie_embeddings=false")
        cutoffs = self.adaptive_cutoffs
        if cutoffs is not None:
            if self.output != "adaptive":
                raise ValueError("model.adaptive_cutoffs is only used with model.output=adaptive")
            if not cutoffs or cutoffs[0] < 1 or any(b <= a for a, b in zip(cutoffs, cutoffs[1:], strict=False)):
                raise ValueError(f"model.adaptive_cutoffs must be increasing positive ranks (got {cutoffs})")
        return self

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            preset = cls.PRESETS.get(data["preset"])
            if preset is not None:  # an unknown name is reported by the member's Literal check
                data = {**preset, **{k: v for k, v in data.items() if v is not None}}
        return data

    @model_serializer(mode="wrap")
    def _own_fields_after_preset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump `arch`, `preset`, the architecture's own fields, then the other common ones (the order config
        files have always had)."""
        data = handler(self)
        common = ModelSection.model_fields
        head = {key: data[key] for key in ("arch", "preset") if key in data}
        return {**head, **{k: v for k, v in data.items() if k not in common},
                **{k: v for k, v in data.items() if k in common and k not in head}}


class RNNConfig(ModelSection):
    """The GRU/LSTM encoder-decoder with attention (models/rnn.py); `preset` fills sizes not given explicitly."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # For tests: trains in seconds on the fixture.
        "tiny": {"embed_dim": 32, "hidden": 64, "layers": 1, "bidirectional": True},
        # The demo size: overfits a few thousand Bible verses within minutes on 2 CPU cores.
        "small": {"embed_dim": 128, "hidden": 256, "layers": 1, "bidirectional": True},
        "base": {"embed_dim": 256, "hidden": 512, "layers": 2, "bidirectional": True},
    }

    arch: Literal["rnn"] = "rnn"
    preset: Literal["tiny", "small", "base"] | None = None
    cell: Literal["gru", "lstm"] = "gru"
    embed_dim: int = Field(128, ge=1)
    hidden: int = Field(256, ge=1)
    layers: int = Field(1, ge=1, le=8)
    bidirectional: bool = True
    attention: Literal["dot", "general", "additive", "none"] = "general"


class AttentionStackConfig(ModelSection):
    """What both Transformers have (models/attention.py): width, heads, MLP, norm, positions, bias, dropout.

    Not a member of `ModelConfig` itself: `TransformerConfig` and `DecoderConfig` are.
    """

    d_model: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    ffn: int = Field(1024, ge=1, description="hidden width of each block's MLP")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    positions: Literal["learned", "rotary"] = "learned"
    max_positions: int = Field(1024, ge=1, description="longest sequence with learned positions")
    bias: bool = Field(True, description="biases in every Linear and LayerNorm")
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_the_width(self) -> AttentionStackConfig:
        if self.d_model % self.heads:
            raise ValueError(f"model.d_model={self.d_model} must be a multiple of model.heads={self.heads}")
        if self.positions == "rotary" and (self.d_model // self.heads) % 2:
            raise ValueError(f"model.positions=rotary needs an even head width (d_model / heads = "
                             f"{self.d_model // self.heads})")
        if self.output != "full":
            raise ValueError(f"model.output=adaptive is the RNN's; model.arch={self.arch} has the full softmax "
                             "(use full)")
        return self


class TransformerConfig(AttentionStackConfig):
    """The pre-norm Transformer encoder-decoder (models/transformer.py); `preset` fills sizes not given explicitly."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # For tests: trains in seconds on the fixture.
        "tiny": {"d_model": 64, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ffn": 256},
        # Sized for a 2-core CPU: a few thousand Bible verses in minutes.
        "small": {"d_model": 256, "heads": 4, "encoder_layers": 3, "decoder_layers": 3, "ffn": 1024},
        # Transformer-base (Vaswani et al. 2017): a GPU size.
        "base": {"d_model": 512, "heads": 8, "encoder_layers": 6, "decoder_layers": 6, "ffn": 2048},
    }

    arch: Literal["transformer"] = "transformer"
    preset: Literal["tiny", "small", "base"] | None = None
    encoder_layers: int = Field(3, ge=1, le=48)
    decoder_layers: int = Field(3, ge=1, le=48)


class DecoderConfig(AttentionStackConfig):
    """The decoder-only causal language model (models/decoder.py, GPT-2's shape); `preset` fills sizes."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # For tests: trains in seconds on the fixture.
        "tiny": {"d_model": 64, "heads": 4, "layers": 2, "ffn": 256},
        # Sized for a 2-core CPU: nanoGPT's Shakespeare-on-a-laptop scale.
        "small": {"d_model": 192, "heads": 6, "layers": 4, "ffn": 768},
        # GPT-2 small's width and depth (124M with its 50k vocabulary): a GPU size.
        "base": {"d_model": 768, "heads": 12, "layers": 12, "ffn": 3072},
    }

    arch: Literal["decoder"] = "decoder"
    preset: Literal["tiny", "small", "base"] | None = None
    layers: int = Field(4, ge=1, le=96)


def _model_arch(value: Any) -> Any:
    """The `ModelConfig` member to validate `value` with: its `arch`, "rnn" when it has none (older files)."""
    if isinstance(value, dict):
        return value.get("arch", "rnn")
    return getattr(value, "arch", "rnn")  # a member instance; anything else fails in the rnn member's type check


# The `model` section: one member per architecture, chosen by `model.arch` (a new architecture: one line here, its
# module in models/ and its line in models.MODELS).
ModelConfig = Annotated[
    Union[  # noqa: UP007 (one member per line: a new architecture adds one)
        Annotated[RNNConfig, Tag("rnn")],
        Annotated[TransformerConfig, Tag("transformer")],
        Annotated[DecoderConfig, Tag("decoder")],
    ],
    Discriminator(_model_arch),
]


def _members(union: Any) -> dict[str, type[ModelSection]]:
    """arch -> member class of a `ModelConfig`-shaped annotation."""
    inner = get_args(union)[0]  # the Union of tagged members, or the one member itself (Union[X] is X)
    members = get_args(inner) if get_origin(inner) in (Union, UnionType) else (inner,)
    classes = [get_args(m)[0] if get_origin(m) is Annotated else m for m in members]
    return {cls.model_fields["arch"].default: cls for cls in classes}


MODEL_CONFIGS = _members(ModelConfig)  # arch -> its config class


class TrainConfig(Section):
    """Optimizer, schedule, batching, evaluation and stopping."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(2e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_tokens: int = Field(2048, ge=16, description="padded tokens (longer side) per length-bucketed batch")
    max_batch_size: int = Field(256, ge=1)
    clip_norm: float | None = Field(1.0, gt=0)
    eval_every: int = Field(0, ge=0, description="evaluate every N steps; 0 = once per epoch")
    patience: int | None = Field(None, ge=1, description="stop after this many evaluations without improvement")
    max_eval_examples: int | None = Field(None, ge=1, description="evaluate val loss on at most this many pairs")
    bleu_examples: int = Field(0, ge=0, description="pairs of the validation split decoded for BLEU each eval")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = Field(False, description="torch.compile the model for training steps (eager evaluation); "
                                             "measured no faster on CPU for the RNN seq2seq, see docs/benchmarks.md")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    replica_groups: int | None = Field(None, ge=1, description=(
        "sweep --vectorized on a CPU: the replicas train as this many stacks side by side, each in its own "
        "thread with its share of the threads (default: one per thread, at most one per replica, and one stack "
        "under OMP_WAIT_POLICY=active; 1 = one stack)"))
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    tensorboard: bool = False

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"each beta must be in [0, 1) (got {value})")
        return value


class TimescaleRecord(Section):
    """How a run derived `weight_decay` from `tau_epochs` (written into its config.yaml; see docs/regularization.md)."""

    steps_per_epoch: float = Field(gt=0, description="optimizer steps per epoch (mean over the run's epochs)")
    tau_iter: float = Field(gt=0, description="tau_epochs × steps_per_epoch: the timescale in steps")
    peak_lr: float = Field(gt=0, description="train.lr, the schedule's peak η_max")
    rule: str = Field(description="the derivation under the decay scaling, e.g. λ = 1/(η_max·τ_iter)")


# Fields a run resolves into `weight_decay` (data/prepare.py `resolve_timescale`); not arguments of `Regularization`.
TIMESCALE_FIELDS = ("tau_epochs", "timescale")


class RegularizationConfig(Section):
    """Maps 1:1 onto `decaylab.regularization.Regularization` (see docs/regularization.md), plus λ's timescale."""

    # the allowed values are the rule registry's (decaylab.regularization.rules)
    mode: Literal[MODES] = "none"  # type: ignore[valid-type]
    weight_decay: float = Field(0.0, ge=0)
    l1: float = Field(0.0, ge=0)
    decay_set: Literal[DECAY_SETS] = "no_bias_norm"  # type: ignore[valid-type]
    decay_scaling: Literal[DECAY_SCALINGS] = "lr"  # type: ignore[valid-type]
    exclude: list[str] = Field(default_factory=list)
    multipliers: dict[str, float] = Field(default_factory=dict)
    allow_double: bool = False
    weight_decay_schedule: Literal[WEIGHT_DECAY_SCHEDULE_NAMES] = Field(  # type: ignore[valid-type]
        "constant", description="λ_t = λ·ρ(t) over the run (constant, linear or cosine to zero)")
    weight_decay_warmup_steps: int = Field(0, ge=0, description="λ ramps linearly up to λ over this many steps")

    tau_epochs: float | None = Field(
        None, gt=0, description="λ through its EMA timescale in epochs (Wang & Aitchison 2025), instead of "
                                "weight_decay: the run derives weight_decay from it, the peak lr and its steps per "
                                "epoch")
    timescale: TimescaleRecord | None = Field(
        None, description="written by the run that derived weight_decay from tau_epochs; not set by hand")

    @model_validator(mode="after")
    def _tau_or_weight_decay(self) -> RegularizationConfig:
        if self.tau_epochs is None and self.timescale is not None:
            raise ValueError("regularization.timescale records how a run derived weight_decay from "
                             "regularization.tau_epochs; without tau_epochs it has no meaning (remove it)")
        if self.tau_epochs is not None and self.timescale is None and self.weight_decay > 0:
            raise ValueError(f"regularization.tau_epochs={self.tau_epochs:g} and regularization.weight_decay="
                             f"{self.weight_decay:g} both set λ; give one of them")
        return self

    def rule_settings(self) -> dict[str, Any]:
        """The `Regularization(**…)` arguments: every field but the timescale's (a run turns those into λ)."""
        return self.model_dump(exclude=set(TIMESCALE_FIELDS))

    @model_validator(mode="after")
    def _combination_means_something(self) -> RegularizationConfig:
        check_settings(self.rule_settings())  # the registry's rule: one line naming the fields
        return self


class GenerationConfig(Section):
    """Decoding defaults for `generate`, evaluation BLEU and samples."""

    beam: int = Field(1, ge=1, le=64)
    length_penalty: float = Field(1.0, ge=0)
    max_len_ratio: float = Field(1.5, gt=0)
    max_len_extra: int = Field(10, ge=0)
    max_input_tokens: int | None = Field(
        None, ge=2, description="longest source (tokens, EOS included) generate/evaluate give the model; a longer "
                                "one is cut to it with a warning (default: twice the longest training source)")


class Config(Section):
    """A complete, resolved run configuration."""

    seed: int = 0
    # Seed of the data order (batches per epoch, evaluation subsets); None: `seed`. A sweep's seed repeats
    # change `seed` (initial weights, dropout) and keep this fixed, as HF Trainer's `data_seed` does.
    data_seed: int | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=RNNConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    regularization: RegularizationConfig = Field(default_factory=RegularizationConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    @model_validator(mode="after")
    def _data_kind_fits_the_model(self) -> Config:
        wanted = "text" if self.model.arch == "decoder" else "pairs"
        if self.data.kind is None:
            self.data.kind = wanted
        elif self.data.kind != wanted:
            raise ValueError(f"data.kind={self.data.kind} does not fit model.arch={self.model.arch}: a decoder-only "
                             "language model (decoder) trains on text, the encoder-decoders (rnn, transformer) on "
                             "pairs")
        if wanted == "text":
            if self.model.positions == "learned" and self.data.block_size > self.model.max_positions:
                raise ValueError(f"data.block_size={self.data.block_size} is longer than model.max_positions="
                                 f"{self.model.max_positions} (raise it, or use model.positions=rotary)")
            if self.train.bleu_examples:
                raise ValueError("train.bleu_examples decodes translations of pairs; a language model has none (use 0)")
        return self

    @model_validator(mode="after")
    def _rule_fits_the_optimizer(self) -> Config:
        try:  # e.g. SWD needs Adam's second moment, coupled decay is not AdamW's
            check_settings(self.regularization.rule_settings(), self.train.optimizer)
        except ValueError as exc:
            raise ValueError(f"regularization.mode with train.optimizer: {exc}") from None
        return self

    @model_validator(mode="after")
    def _adaptive_output_without_label_smoothing(self) -> Config:
        if self.model.output == "adaptive" and self.train.label_smoothing:
            raise ValueError("train.label_smoothing needs the full distribution at every target; it is not "
                             "supported with model.output=adaptive (use 0)")
        return self

    @model_validator(mode="after")
    def _timescale_has_a_meaning(self) -> Config:
        reg = self.regularization
        if reg.tau_epochs is not None:
            problem = timescale_problem(reg.mode, self.train.optimizer, self.train.momentum)
            if problem is not None:
                raise ValueError(f"regularization.tau_epochs: {problem}")
        return self

    @property
    def order_seed(self) -> int:
        """The seed of the data order: `data_seed`, or `seed` when that is unset."""
        return self.seed if self.data_seed is None else self.data_seed


def _format_validation_error(error: ValidationError, origin: str) -> str:
    """One line per problem: the dotted field, what was wrong, what was given."""
    parts = []
    for item in error.errors():
        loc, message, given = item["loc"], item["msg"], item.get("input")
        if loc[:1] == ("model",) and item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # no member for this `model.arch`: name the field and the architectures, as a Literal error would
            loc, given = ("model", "arch"), given.get("arch") if isinstance(given, dict) else given
            message = f"Input should be {_choices(list(MODEL_CONFIGS))}"
        elif loc[:1] == ("model",) and len(loc) > 1 and loc[1] in MODEL_CONFIGS:
            loc = loc[:1] + loc[2:]  # pydantic puts the member's tag into the location: model.rnn.cell
        field = ".".join(str(part) for part in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = "unknown key (check spelling; see `decaylab train --help` for the sections)"
        shown = "" if isinstance(given, dict) or item["type"] == "missing" else f" (got {given!r})"
        parts.append(f"config field '{field}': {message}{shown}")
    return f"{origin}: " + "; ".join(parts)


def _choices(values: list[str]) -> str:
    """'a', 'b' or 'c', as pydantic lists a Literal's values."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set model.hidden=128")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise UserError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config dict with each `section.key=value` applied."""
    result = yaml.safe_load(yaml.safe_dump(raw)) if raw else {}
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def build_config(raw: dict[str, Any], origin: str = "config") -> Config:
    """Validate a raw dict into a Config, raising UserError with every bad field named."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, origin)) from None


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    if not path.is_file():
        raise UserError(not_found(path, "config file"))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections (data, model, train, …) at the top level")
    return data


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults), apply overrides, validate."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return build_config(raw, origin=str(path) if path is not None else "config")


def flag_overrides(**flags: object) -> list[str]:
    """`--set` strings for the dedicated command-line flags that were given (keys are dotted fields)."""
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


def build_run_config(path: Path | None, sets: list[str] | None, **flags: object) -> Config:
    """A command's config: the file (or the defaults), then its dedicated flags, then --set (the most explicit wins)."""
    return load_config(path, flag_overrides(**flags) + list(sets or []))


def config_to_dict(config: Config) -> dict[str, Any]:
    """A JSON/YAML-safe dict of the fully resolved config."""
    return config.model_dump(mode="json")


def dump_yaml(config: Config) -> str:
    """The resolved config as YAML text, in section order."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
