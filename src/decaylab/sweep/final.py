"""The final model: the chosen point trained on the training split (or the identical trial reused), tested once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from decaylab.runfolder.lock import LOCK_FILE, FolderLock
from decaylab.sweep.points import Point, trial_config
from decaylab.sweep.shared import Shared
from decaylab.sweep.store import SweepStore
from decaylab.sweep.trial import TrialContext


def _complete(run: Path) -> bool:
    """A run folder whose training ended (its last checkpoint is at the end of its schedule or stopped early)."""
    return (run / "config.yaml").is_file() and (run / "checkpoints" / "best").exists()


def run_final(store: SweepStore, ctx: TrialContext, shared: Shared, point: Point, reuse: str | None,
              say) -> dict[str, Any]:
    """Make `final/` (copy of trial `reuse` if given, else a fresh run) and evaluate it on the test split once."""
    from decaylab.evaluation.evaluate import evaluate_run, result_line
    from decaylab.training import Trainer

    final = store.final
    eval_file = final / "eval.json"
    if eval_file.is_file() and "test" in json.loads(eval_file.read_text(encoding="utf-8")):
        test = json.loads(eval_file.read_text(encoding="utf-8"))["test"]  # a resumed sweep: tested already
        return _describe(final, reuse if (final / ".reused").is_file() else None, test, store)
    wall_s = 0.0
    source = store.run_dir(reuse) if reuse else None
    if source is not None and _complete(source):
        if not final.exists():
            staging = final.with_name("final.new")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(LOCK_FILE))  # final/ has its own
            (staging / ".reused").write_text(reuse + "\n", encoding="utf-8")
            staging.rename(final)  # a kill leaves final.new, never half a final/
        say(f"final: trial {reuse} is the chosen configuration on the training split; reused as {final}")
    else:
        reuse = None
        say(f"final: training {point.key} on the full training split into {final}")
        cfg = trial_config(ctx.base_config(), point, ctx.modes)
        result = Trainer(cfg, final, splits=shared.splits, tokenizer=shared.tokenizer, resume=True, quiet=True,
                         init_weights=shared.init).fit()
        wall_s = result.history[-1]["wall_s"] if result.history else 0.0
    if not shared.splits.test:
        say("final: the test split is empty; no test metrics")
        return {**_describe(final, reuse, None, store), "train_wall_s": wall_s}
    with FolderLock(final):  # the sweep's owner owns its final model too (the Trainer held it while training)
        test = evaluate_run(final, "test")
    say(f"final: test {result_line(test)}")
    return {**_describe(final, reuse, test, store), "train_wall_s": wall_s}


def _describe(final: Path, reuse: str | None, test: dict[str, Any] | None, store: SweepStore) -> dict[str, Any]:
    return {"run": str(final.relative_to(store.root)), "reused_trial": reuse, "test": test}
