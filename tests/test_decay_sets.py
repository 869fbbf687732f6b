"""Other libraries' decay sets, reproduced exactly: decaylab's decision for every parameter against the library's own.

`hf` is compared with transformers' `Trainer.get_decay_parameter_names` and `timm` with timm's
`param_groups_weight_decay`, both the installed libraries' own code (dev dependencies; timm is installed without
torchvision by the Makefile, see `timm_param_groups_weight_decay`). nanoGPT and OLMo are not installable libraries:
`nanogpt` and `olmo2` are compared with the rule each one's source states, restated here (with its source);
`keras` decays every trainable variable unless `exclude_from_weight_decay` is called.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from decaylab.config import RNNConfig, TransformerConfig, load_config
from decaylab.errors import UserError
from decaylab.models import build_model
from decaylab.regularization import DECAY_SET_RULES, DECAY_SETS, Regularization, compare_decay_sets
from decaylab.regularization.optim import base_optimizer, build_optimizer, check_one_group

DOCS = Path(__file__).resolve().parents[1] / "docs"

# -- the models -----------------------------------------------------------------------------------------------------


class ScaleNorm(nn.Module):
    """A hand-written RMSNorm: neither nn.LayerNorm nor nn.RMSNorm (only its class name says norm)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class Mixer(nn.LayerNorm):
    """An nn.LayerNorm subclass kept under a name that says nothing: transformers drops it by type."""


class Block(nn.Module):
    """A pre-norm block with every norm naming convention that the libraries' rules tell apart."""

    def __init__(self, d: int, heads: int, positions: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)  # GPT-2's name
        self.attn = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(d // heads)  # QK-norm (OLMo 2, Qwen3): `_norm` in the name
        self.k_norm = ScaleNorm(d // heads)
        self.proj = nn.Linear(d, d)
        self.layer_norm = nn.LayerNorm(d)  # the name that escaped a "LayerNorm.weight" filter (transformers #16908)
        self.gate = nn.RMSNorm(d)  # an RMSNorm whose name has no "norm": transformers keeps it in the decay set
        self.mix = Mixer(d)
        self.normalizer = nn.Linear(d, d)  # not a norm: `(?:^|\.)norm(?:$|\.)` must not match "normalizer"
        self.fc = nn.Linear(d, 4 * d)
        self.fc_out = nn.Linear(4 * d, d, bias=False)
        self.rel_pos_bias_table = nn.Parameter(torch.zeros(2 * positions - 1, heads))  # a 2-D "bias"


class LM(nn.Module):
    """A decoder-only Transformer shape: token and position embeddings, ViT-style parameters, a tied head."""

    def __init__(self, vocab: int = 32, d: int = 16, heads: int = 2, positions: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(positions, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, d))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList([Block(d, heads, positions) for _ in range(2)])
        self.attn_norm = ScaleNorm(d)  # `_norm(?:$|\.)`
        self.LayerNorm = nn.LayerNorm(d)  # BERT's capitalisation: the patterns see the lowercased name
        self.norm = nn.RMSNorm(d)  # `(?:^|\.)norm(?:$|\.)`
        self.ln_f = nn.LayerNorm(d)
        self.logit_scale = nn.Parameter(torch.ones(()))  # 0-d
        self.logit_bias = nn.Parameter(torch.zeros(vocab))
        self.frozen = nn.Linear(d, d)
        self.frozen.requires_grad_(False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: named_parameters() lists it once, as wte.weight

    def no_weight_decay(self) -> set[str]:
        """timm's hook: names or fnmatch patterns kept out of the decay set."""
        return {"pos_embed", "cls_token", "blocks.*.rel_pos_bias_table"}


class OlmoNorm(nn.Module):
    """Stands for OLMo's `LayerNormBase` (the base of its LayerNorm and RMSLayerNorm)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class OlmoShaped(nn.Module):
    """OLMo 2's parameter shapes: Linear, its norms, nn.Embedding, biases, and nothing OLMo cannot classify."""

    def __init__(self, vocab: int = 32, d: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            block = nn.Module()
            block.att_proj = nn.Linear(d, 3 * d, bias=True)
            block.q_norm, block.k_norm = OlmoNorm(d), OlmoNorm(d)
            block.attn_out = nn.Linear(d, d)
            block.attn_norm = OlmoNorm(d)
            block.ff_proj = nn.Linear(d, 4 * d)
            block.ff_out = nn.Linear(4 * d, d)
            block.ff_norm = nn.LayerNorm(d)
            self.blocks.append(block)
        self.ln_f = nn.LayerNorm(d)
        self.ff_out = nn.Linear(d, vocab, bias=False)


def transformer(norm: str = "layernorm", bias: bool = True, positions: str = "learned") -> nn.Module:
    torch.manual_seed(0)
    cfg = TransformerConfig(preset="tiny", encoder_layers=1, decoder_layers=1, norm=norm, bias=bias,
                            positions=positions)
    return build_model(cfg, 40)


def seq2seq(**fields: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_model(RNNConfig(preset="tiny", **fields), 40)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lm": LM,
    "transformer-layernorm": transformer,
    "transformer-rmsnorm-nobias-rotary": lambda: transformer("rmsnorm", False, "rotary"),
    "seq2seq-gru": seq2seq,
    "seq2seq-lstm-untied": lambda: seq2seq(cell="lstm", tie_embeddings=False, attention="additive"),
    "seq2seq-adaptive": lambda: seq2seq(output="adaptive", tie_embeddings=False),
}


def ours(model: nn.Module, decay_set: str) -> dict[str, bool]:
    """decaylab's decision for every trainable parameter, under its first name (as model.named_parameters())."""
    plan = Regularization(mode="decoupled", weight_decay=0.1, decay_set=decay_set).plan(model)
    return {i.name: i.decayed for i in plan.params if i.trainable}


# -- the libraries' own decisions -----------------------------------------------------------------------------------


def hf(model: nn.Module) -> dict[str, bool]:
    """transformers' Trainer: get_decay_parameter_names, then create_optimizer's grouping of named_parameters()."""
    from transformers import Trainer

    # The method reads only its argument (it calls get_parameter_names(model, [nn.LayerNorm], patterns)), so it is
    # called unbound; checked here so that a release whose method needs the Trainer's state fails loudly.
    body = inspect.getsource(Trainer.get_decay_parameter_names)
    assert "self." not in body, body
    decay = Trainer.get_decay_parameter_names(None, model)
    # create_optimizer: the decay group is `p for n, p in named_parameters() if n in decay_parameters and
    # p.requires_grad`, the other group the trainable rest
    return {n: n in decay for n, p in model.named_parameters() if p.requires_grad}


# How timm's optimizer factory collects the model's no_weight_decay() names before it calls
# param_groups_weight_decay (timm/optim/_optim_factory.py, OptimizerRegistry.create_optimizer).
TIMM_COLLECTS = "no_weight_decay = getattr(model_or_params, 'no_weight_decay', lambda: set())()"


@functools.cache
def timm_param_groups_weight_decay() -> Callable[..., list[dict[str, Any]]]:
    """timm's own `param_groups_weight_decay`, executed from the installed timm's `optim/_param_groups.py`.

    `import timm` imports torchvision, and PyPI has torchvision for torch 2.13 only as a CUDA build, which fails to
    import beside the CPU torch ("operator torchvision::nms does not exist"); a newer torchvision would replace
    torch. So the Makefile installs timm without its dependencies, and this runs timm's module source whole except
    its one import that reaches `timm.models` (`group_parameters`, which param_groups_weight_decay does not use).
    """
    spec = importlib.util.find_spec("timm")  # locates the package without executing its __init__
    assert spec is not None and spec.submodule_search_locations, (
        "timm is not installed: `make setup` installs it (pip install --no-deps timm==1.0.31)")
    root = Path(next(iter(spec.submodule_search_locations)))
    assert TIMM_COLLECTS in (root / "optim" / "_optim_factory.py").read_text(), "timm changed how it collects " \
        "no_weight_decay(): update the `timm` decay set and this test"
    path = root / "optim" / "_param_groups.py"
    tree = ast.parse(path.read_text(), str(path))
    dropped = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "timm.models"]
    assert [[a.name for a in n.names] for n in dropped] == [["group_parameters"]], ast.dump(tree)[:300]
    tree.body = [n for n in tree.body if n not in dropped]
    namespace: dict[str, Any] = {"__name__": "timm.optim._param_groups"}
    exec(compile(tree, str(path), "exec"), namespace)  # noqa: S102 (the installed library's own source)
    return namespace["param_groups_weight_decay"]


def timm(model: nn.Module) -> dict[str, bool]:
    """timm's decision: its param_groups_weight_decay with the model's no_weight_decay() list, as its factory."""
    no_weight_decay = getattr(model, "no_weight_decay", lambda: set())()
    groups = timm_param_groups_weight_decay()(model, weight_decay=0.05, no_weight_decay_list=no_weight_decay)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    return {n: id(p) in decayed for n, p in model.named_parameters() if p.requires_grad}


def nanogpt(model: nn.Module) -> dict[str, bool]:
    """nanoGPT's rule (karpathy/nanoGPT model.py, GPT.configure_optimizers): of the trainable named_parameters(),
    those with dim >= 2 are decayed ("all weight tensors in matmuls + embeddings"), the others not."""
    return {n: p.dim() >= 2 for n, p in model.named_parameters() if p.requires_grad}


def olmo_sets(model: nn.Module, norm_types: tuple[type[nn.Module], ...], decay_norm_and_bias: bool = True,
              decay_embeddings: bool = False) -> tuple[set[str], set[str], dict[str, torch.Tensor]]:
    """OLMo's rule (allenai/OLMo olmo/optim.py, get_param_groups), restated: (decayed names, other names, tensors).

    OLMo 2's config sets decay_norm_and_bias=true, decay_embeddings=false (configs/official-1124/
    OLMo2-7B-stage1.yaml). Every trainable parameter, under its full name from every module that holds it: a name
    ending in "bias" goes with the norms; a "weight" of an nn.Linear is decayed; of a norm (OLMo's LayerNormBase
    subclasses or nn.LayerNorm; `norm_types` are the model's own) decayed iff decay_norm_and_bias; of an
    nn.Embedding iff decay_embeddings. Like OLMo, it asserts that every name is in one set and none in both.
    """
    decay: set[str] = set()
    no_decay: set[str] = set()
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for local, p in module.named_parameters():
            if not p.requires_grad:
                continue
            full = f"{module_name}.{local}" if module_name else local
            tensors[full] = p
            if local.endswith("bias"):
                (decay if decay_norm_and_bias else no_decay).add(full)
            elif local.endswith("weight") and isinstance(module, nn.Linear):
                decay.add(full)
            elif local.endswith("weight") and isinstance(module, (*norm_types, nn.LayerNorm)):
                (decay if decay_norm_and_bias else no_decay).add(full)
            elif local.endswith("weight") and isinstance(module, nn.Embedding):
                (decay if decay_embeddings else no_decay).add(full)
    assert not decay & no_decay, f"in both sets: {decay & no_decay}"
    assert not set(tensors) - (decay | no_decay), f"not classified: {sorted(set(tensors) - (decay | no_decay))}"
    return decay, no_decay, tensors


def olmo(model: nn.Module, norm_types: tuple[type[nn.Module], ...]) -> dict[str, bool]:
    """OLMo 2's decision for every trainable parameter under its first name."""
    decay, _, _ = olmo_sets(model, norm_types)
    return {n: n in decay for n, p in model.named_parameters() if p.requires_grad}


# -- the registry ---------------------------------------------------------------------------------------------------


def test_every_registered_set_has_a_description_a_rule_and_a_docs_row() -> None:
    docs = (DOCS / "regularization.md").read_text()
    for name in DECAY_SETS:
        entry = DECAY_SET_RULES[name]
        assert entry.name == name and entry.decays
        assert f"| `{name}` |" in docs, f"docs/regularization.md has no row for decay set {name!r}"
        assert ours(LM(), name)  # decay_set.py has a rule for it
    for name in ("hf", "timm", "nanogpt", "olmo2", "keras"):
        assert DECAY_SET_RULES[name].source, name
    # config validation reads the registry
    assert load_config(None, ["regularization.decay_set=olmo2"]).regularization.decay_set == "olmo2"
    with pytest.raises(UserError, match=r"'regularization\.decay_set'.*'hf'.*\(got 'huggingface'\)"):
        load_config(None, ["regularization.decay_set=huggingface"])
    # and so does the CLI's help
    from typer.testing import CliRunner

    from decaylab.cli import app

    for command in ("train", "audit"):
        help_text = " ".join(CliRunner().invoke(app, [command, "--help"]).output.replace("│", " ").split())
        assert "matrices_no_embedding, hf, timm, nanogpt, olmo2, keras." in help_text, command


# -- each set against its library -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", list(MODELS))
def test_hf_matches_transformers_trainer(model_name: str) -> None:
    model = MODELS[model_name]()
    assert ours(model, "hf") == hf(model)


def test_hf_on_the_norm_names_that_differ() -> None:
    """The cases the patterns and the LayerNorm type check decide, spelled out (the comparison above proves them)."""
    got = ours(LM(), "hf")
    assert not got["blocks.0.layer_norm.weight"] and not got["blocks.0.mix.weight"]  # nn.LayerNorm (a subclass too)
    assert not got["blocks.0.q_norm.weight"] and not got["attn_norm.weight"] and not got["norm.weight"]  # by name
    assert not got["LayerNorm.weight"] and not got["blocks.0.rel_pos_bias_table"]
    assert got["blocks.0.gate.weight"]  # an nn.RMSNorm whose name has no norm in it is decayed by transformers
    assert got["blocks.0.normalizer.weight"] and got["wte.weight"] and got["wpe.weight"] and got["pos_embed"]


@pytest.mark.parametrize("model_name", list(MODELS))
def test_timm_matches_param_groups_weight_decay(model_name: str) -> None:
    model = MODELS[model_name]()
    assert ours(model, "timm") == timm(model)


def test_timm_reads_the_models_no_weight_decay_patterns() -> None:
    got = ours(LM(), "timm")
    assert not got["pos_embed"] and not got["cls_token"]  # named by no_weight_decay()
    assert not got["blocks.1.rel_pos_bias_table"]  # by the fnmatch pattern blocks.*.rel_pos_bias_table
    assert got["wte.weight"] and got["wpe.weight"]  # 2-D embeddings are decayed
    assert ours(LM(), "matrices")["pos_embed"]  # without the hook the 3-D parameter would be decayed
    reasons = {i.name: i.reason for i in Regularization(decay_set="timm").plan(LM()).params}
    assert reasons["blocks.1.rel_pos_bias_table"] == "no_weight_decay() pattern 'blocks.*.rel_pos_bias_table'"


def test_timm_refuses_a_no_weight_decay_that_returns_no_names() -> None:
    model = LM()
    model.no_weight_decay = lambda: {3}  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=r"no_weight_decay\(\) must return parameter names"):
        Regularization(decay_set="timm").plan(model)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_nanogpt_matches_configure_optimizers(model_name: str) -> None:
    model = MODELS[model_name]()
    assert ours(model, "nanogpt") == nanogpt(model) == ours(model, "matrices")


@pytest.mark.parametrize("model_name", ["olmo", "transformer-layernorm", "transformer-rmsnorm-nobias-rotary"])
def test_olmo2_matches_get_param_groups(model_name: str) -> None:
    model = OlmoShaped() if model_name == "olmo" else MODELS[model_name]()
    assert ours(model, "olmo2") == olmo(model, norm_types=(OlmoNorm, nn.RMSNorm))
    assert not ours(model, "olmo2")[next(n for n, _ in model.named_parameters())]  # the token embedding


def test_olmo2_decays_what_olmo_cannot_classify() -> None:
    """OLMo's assertion refuses a parameter that is not a Linear/norm/Embedding weight nor a bias (GRU weights, bare
    parameters); `olmo2` decays them, as every non-embedding weight."""
    for model in (seq2seq(), LM()):
        with pytest.raises(AssertionError, match="not classified"):
            olmo(model, norm_types=(ScaleNorm, nn.RMSNorm))
    got = ours(seq2seq(), "olmo2")
    assert got["encoder.weight_ih_l0"] and got["encoder.bias_ih_l0"] and not got["src_embed.weight"]
    got = ours(LM(), "olmo2")
    assert got["pos_embed"] and got["blocks.0.k_norm.weight"] and got["logit_bias"]
    assert not got["wte.weight"] and not got["wpe.weight"]  # the tied head shares wte's (embedding) weight


@pytest.mark.parametrize("model_name", list(MODELS))
def test_keras_decays_every_trainable_parameter(model_name: str) -> None:
    """Keras 3's optimizers decay every variable unless `exclude_from_weight_decay(var_names=...)` was called."""
    model = MODELS[model_name]()
    assert ours(model, "keras") == {n: True for n, p in model.named_parameters() if p.requires_grad}
    assert ours(model, "keras") == ours(model, "all")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_the_transformer_table_of_docs_models(norm: str) -> None:
    """docs/models.md: (embeddings, weight matrices, biases, norm gains and biases) decayed under each library set."""
    model = transformer(norm)
    expected = {
        "hf": (True, True, False, False),
        "timm": (True, True, False, False),
        "nanogpt": (True, True, False, False),
        "olmo2": (False, True, True, True),
        "keras": (True, True, True, True),
    }
    for decay_set, row in expected.items():
        got = ours(model, decay_set)
        norms = [n for n in got if "norm" in n]
        biases = [n for n in got if n.endswith(".bias") and "norm" not in n]
        embeddings = ["embed.weight", "src_positions.weight", "tgt_positions.weight"]
        matrices = [n for n in got if n.endswith(".weight") and "norm" not in n and n not in embeddings]
        assert norms and biases and matrices
        for names, decayed in zip((embeddings, matrices, biases, norms), row, strict=True):
            assert {got[n] for n in names} == {decayed}, (decay_set, names[:2])


# -- exactly one group ----------------------------------------------------------------------------------------------


def test_every_optimizer_build_puts_each_trainable_parameter_in_exactly_one_group() -> None:
    for name in DECAY_SETS:
        model = LM()
        opt = Regularization(mode="decoupled", weight_decay=0.1, decay_set=name).optimizer(model, "adamw", lr=1e-3)
        listed = [id(p) for g in opt.param_groups for p in g["params"]]
        assert sorted(listed) == sorted(id(p) for p in model.parameters() if p.requires_grad), name


def test_a_parameter_in_two_groups_or_in_none_is_named() -> None:
    model = LM()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    groups = Regularization(decay_set="hf").param_groups(model, lr=1e-3)
    decay, no_decay = groups
    no_decay["params"].append(model.wte.weight)  # also decayed in the first group
    with pytest.raises(ValueError, match=r"parameter 'wte\.weight' is in groups 'decay' and 'no_decay'"):
        check_one_group(groups, trainable)
    no_decay["params"].pop()
    del decay["params"][decay["param_names"].index("wte.weight")]  # a decayed tensor that now lands nowhere
    with pytest.raises(ValueError, match=r"trainable parameter 'wte\.weight' is in no optimizer param group"):
        build_optimizer(groups, "adamw", mode="decoupled", regularizes=True, allow_double=False, lr=1e-3, kwargs={},
                        trainable=trainable)


def test_olmo_style_groups_of_a_tied_model_are_refused() -> None:
    """OLMo's walk names a tied tensor twice (the embedding's weight and the output Linear's) and puts it in both
    groups; the check names it, where torch would only say "some parameters appear in more than one group"."""
    model = transformer()
    decay, no_decay, tensors = olmo_sets(model, norm_types=(nn.RMSNorm,))
    groups = [{"params": [tensors[n] for n in sorted(decay)]}, {"params": [tensors[n] for n in sorted(no_decay)]}]
    with pytest.raises(ValueError, match=r"parameter 'embed\.weight' is in groups '#0' and '#1'"):
        check_one_group(groups, dict(model.named_parameters()))


def test_base_optimizer_refuses_a_tensor_listed_twice() -> None:
    w = torch.zeros(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match=r"parameter 'a' is twice in group '#0'"):
        base_optimizer({"a": w, "b": w}, "adam", lr=1e-3, kwargs={})
    assert isinstance(base_optimizer({"a": w}, "sgd", lr=1e-3, kwargs={}), torch.optim.SGD)


# -- the comparison -------------------------------------------------------------------------------------------------


def test_compare_lists_each_sets_decision_and_counts_disagreements() -> None:
    model = LM()
    comparison = compare_decay_sets(model, "hf, timm,nanogpt,hf")
    assert comparison.sets == ("hf", "timm", "nanogpt")  # stripped, repeats dropped
    for name in comparison.sets:
        assert {r.name: r.decayed[name] for r in comparison.rows if r.trainable} == ours(model, name)
    diff = {r.name for r in comparison.disagreements}
    assert "pos_embed" in diff and "blocks.0.gate.weight" in diff and "blocks.0.rel_pos_bias_table" in diff
    assert "wte.weight" not in diff and "blocks.0.ln_1.weight" not in diff
    trainable = [r for r in comparison.rows if r.trainable]
    assert comparison.summary().startswith(f"hf, timm, nanogpt disagree on {len(diff)} of {len(trainable)} ")
    rows = comparison.to_dict()["rows"]
    assert [r["name"] for r in rows] == [n for n, _ in model.named_parameters()]
    assert next(r for r in rows if r["name"] == "wte.weight")["aliases"] == ["lm_head.weight"]
    with pytest.raises(ValueError, match="unknown decay set 'flax'; allowed values are all, no_bias_norm"):
        compare_decay_sets(model, ["hf", "flax"])
