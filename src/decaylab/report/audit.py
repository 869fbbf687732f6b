"""The regularization audit of a trained run: which parameters its optimizer decayed, with what λ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decaylab.errors import DamagedFile, UserError


def audit_run(run: Path, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """AuditReport.to_dict() of the run's model and settings, or {"error": why} when it cannot be built.

    A run an objective trained (a sweep over a user's function) carries the audit of its own model in audit.json.
    """
    recorded = Path(run) / "audit.json"
    if recorded.is_file():
        from decaylab.files import read_json_object

        try:
            return read_json_object(recorded) or {}
        except DamagedFile as exc:
            return {"error": f"audit unavailable: {exc}"}
    try:
        from decaylab.data.tokenizer import load_tokenizer
        from decaylab.models import build_model, example_forward
        from decaylab.regularization import Regularization
        from decaylab.runfolder.layout import RunPaths, load_run_config

        config = load_run_config(run)
        vocab = load_tokenizer(RunPaths(Path(run)).tokenizer).get_vocab_size()
        model = build_model(config.model, vocab)  # the decay plan depends on the structure, not on the weights
        reg = Regularization(**config.regularization.rule_settings())
        steps, per_epoch = _steps(history or [])
        report = reg.audit(model, optimizer_name=config.train.optimizer, lr=config.train.lr, steps=steps,
                           steps_per_epoch=per_epoch, example=example_forward(model))
        return report.to_dict()
    except DamagedFile as exc:  # a damaged tokenizer is an error of its own (which file, what still works)
        from decaylab.runfolder.load import TOKENIZER_NEEDED

        raise exc.saying(exc.still or TOKENIZER_NEEDED) from None
    except (UserError, OSError, RuntimeError, ValueError) as exc:
        return {"error": f"audit unavailable: {exc}"}


def _steps(history: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """Total optimizer steps and steps per epoch of a finished history (for the decay timescale in epochs)."""
    if not history:
        return None, None
    last = history[-1]
    step, epoch = last.get("step"), last.get("epoch")
    if not isinstance(step, int) or step <= 0:
        return None, None
    per_epoch = round(step / epoch) if isinstance(epoch, (int, float)) and epoch > 0 else None
    return step, per_epoch if per_epoch else None


def decayed_names(audit: dict[str, Any]) -> dict[str, bool] | None:
    """Parameter name (and every alias) -> decayed, from an audit dict."""
    rows = audit.get("rows")
    if not rows:
        return None
    found: dict[str, bool] = {}
    for row in rows:
        for name in [row["name"], *row.get("aliases", [])]:
            found[name] = bool(row["decayed"])
    return found
