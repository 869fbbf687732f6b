"""Decoding speed: sentences/s and BLEU of greedy and beam 5 (decaylab.generation) against a textbook beam search.

    python benchmarks/decode_speed.py [--quick] [--threads N] [--device cpu|cuda]

The benchmark first trains a small model briefly on bible-en-es (the `small` preset, a fixed number of steps,
about a minute on 2 CPU cores), then decodes the same validation sentences with
  - ours greedy: `translate(method="greedy")`, batched over sentences, finished rows leave the batch;
  - ours beam 5: `translate(method="beam", beam=5)`, one [sentences x beams] batch, finished hypotheses leave it;
  - baseline beam 5: the textbook loop a seed user writes: one sentence at a time, one `model.step` call per
    hypothesis per step, stop when `beam` hypotheses have finished (same model, same length limit).
Goal: ours beam 5 takes at most 2.5x ours greedy's time per sentence. `ratio` = baseline beam time / ours beam
time (> 1: ours faster). Greedy and beam alternate for several repetitions (the goal's ratio), then the slow
baseline alternates with ours beam for fewer (the contract's ratio); per-repetition ratios, then medians.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import common  # sets the OpenMP wait policy; must come before torch
import torch
from torch import nn

from decaylab.config import load_config
from decaylab.data.tokenizer import BOS_ID, EOS_ID, decode, encode
from decaylab.evaluation.metrics import text_metrics
from decaylab.generation import translate
from decaylab.generation.filtering import mask_specials
from decaylab.generation.search import max_lengths
from decaylab.training.trainer import Trainer

NAME = "decode_speed"
GOAL = 2.5  # beam 5 time per sentence / greedy time per sentence, at most
BEAM = 5


@torch.inference_mode()
def textbook_beam(model: nn.Module, src_ids: list[int], beam: int, max_len: int,
                  length_penalty: float = 1.0) -> list[int]:
    """Per-sentence beam search with one model call per hypothesis (the common tutorial's loop)."""
    device = next(model.parameters()).device
    memory = model.encode(torch.tensor([src_ids], device=device), torch.tensor([len(src_ids)]))
    alive: list[tuple[list[int], float, Any]] = [([], 0.0, model.initial_state(memory))]
    finished: list[tuple[list[int], float]] = []
    for step in range(max_len + 1):
        candidates = []
        for tokens, score, state in alive:
            prev = torch.tensor([tokens[-1] if tokens else BOS_ID], device=device)
            log_probs, new_state = model.step(prev, memory, state)
            log_probs = mask_specials(log_probs)[0]
            if step == max_len:  # at the length limit only EOS may follow
                candidates.append((tokens + [EOS_ID], score + log_probs[EOS_ID].item(), new_state))
                continue
            top = log_probs.topk(beam)
            for lp, token in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                candidates.append((tokens + [token], score + lp, new_state))
        candidates.sort(key=lambda c: -c[1])
        alive = []
        for tokens, score, state in candidates:
            if tokens[-1] == EOS_ID:
                finished.append((tokens[:-1], score / len(tokens) ** length_penalty))
            else:
                alive.append((tokens, score, state))
            if len(alive) == beam:
                break
        if len(finished) >= beam or not alive:
            break
    if not finished:
        return alive[0][0] if alive else []
    return max(finished, key=lambda f: f[1])[0]


def textbook_translate(model: nn.Module, tokenizer, sources: list[str], beam: int, ratio: float,
                       extra: int) -> list[str]:
    """The baseline's text in, text out (same length limit as ours)."""
    model.eval()
    outputs = []
    for ids in encode(tokenizer, sources):
        limit = int(max_lengths(torch.tensor([len(ids)]), ratio, extra)[0])
        outputs.append(textbook_beam(model, ids, beam, limit))
    return decode(tokenizer, outputs)


def main() -> None:
    ap = common.argument_parser(__doc__, "decode_speed", "fewer training steps and sentences (under 2 minutes)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--train-steps", type=int, default=None, help="training steps (default 200, quick 80)")
    ap.add_argument("--sentences", type=int, default=None, help="validation sentences decoded (default 128, quick 64)")
    ap.add_argument("--reps", type=int, default=None, help="greedy/beam repetitions (default 7, quick 5)")
    args = ap.parse_args()
    load_before = common.loadavg()
    threads = common.setup_threads(args.threads)
    steps = args.train_steps or (80 if args.quick else 200)
    n_sent = args.sentences or (64 if args.quick else 128)
    reps = args.reps or (5 if args.quick else 7)
    baseline_reps = 1 if args.quick else 2
    started = time.perf_counter()

    # The demo's model and vocabulary; a high learning rate and bf16 so that a minute of training gives outputs
    # of realistic length (an untrained model repeats itself up to the length limit, the worst case for beam).
    cfg = load_config(None, [
        "data.name=bible-en-es", "data.max_examples=4000", f"data.max_valid_examples={max(n_sent, 100)}",
        "data.max_words=25", "tokenizer.vocab_size=4000", "model.preset=small", "model.cell=gru",
        "model.dropout=0.0", "train.optimizer=adamw", "train.lr=0.005", "train.schedule=linear",
        f"train.warmup_steps={steps // 10}", f"train.max_steps={steps}", "train.epochs=100",
        f"train.eval_every={steps}", "train.max_eval_examples=100", "train.precision=bf16",
        f"train.threads={threads}", f"train.device={args.device}", "regularization.mode=decoupled",
        "regularization.weight_decay=0.01"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp) / "run", quiet=True)
        history = trainer.fit().history
        train_s = time.perf_counter() - t0
    model, tokenizer, device = trainer.model.eval(), trainer.tokenizer, trainer.device
    gen = cfg.generation
    pairs = trainer.splits.valid[:n_sent]
    sources, refs = [p.source for p in pairs], [p.target for p in pairs]

    def ours(method: str) -> list[str]:
        return translate(model, tokenizer, sources, method=method, beam=BEAM, length_penalty=gen.length_penalty,
                         max_len_ratio=gen.max_len_ratio, max_len_extra=gen.max_len_extra, device=device)

    runs = {
        "ours_greedy": lambda: ours("greedy"),
        "ours_beam5": lambda: ours("beam"),
        "baseline_beam5": lambda: textbook_translate(model, tokenizer, sources, BEAM, gen.max_len_ratio,
                                                     gen.max_len_extra),
    }
    outputs: dict[str, list[str]] = {}

    def timed(name: str):
        def run(_: int) -> float:
            common.sync(device)
            t = time.perf_counter()
            outputs[name] = runs[name]()
            common.sync(device)
            return time.perf_counter() - t
        return run

    translate(model, tokenizer, sources[:8], method="beam", beam=BEAM, device=device)  # warm the allocator
    _, times = common.interleave({name: timed(name) for name in ("ours_greedy", "ours_beam5")}, reps=reps, warmup=0)
    _, versus = common.interleave({name: timed(name) for name in ("baseline_beam5", "ours_beam5")},
                                  reps=baseline_reps, warmup=0)
    times["baseline_beam5"] = versus["baseline_beam5"]
    med = {name: common.median(t) for name, t in times.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name in runs:
        scores = text_metrics(outputs[name], refs)
        rows[name] = {"sentences_per_s": n_sent / med[name], "ms_per_sentence": 1e3 * med[name] / n_sent,
                      "seconds_each_rep": [round(t, 3) for t in times[name]], "bleu": scores.bleu,
                      "chrf": scores.chrf, "mean_output_words": sum(len(o.split()) for o in outputs[name]) / n_sent}
    beam_over_greedy = common.median([b / g for b, g in zip(times["ours_beam5"], times["ours_greedy"], strict=True)])
    ratio = common.median([b / o for b, o in zip(versus["baseline_beam5"], versus["ours_beam5"], strict=True)])
    result = {
        "ratio": ratio,
        "goal": {"beam5_over_greedy_time_max": GOAL, "beam5_over_greedy_time": beam_over_greedy,
                 "met": beam_over_greedy <= GOAL},
        "baseline": {"name": "textbook per-sentence beam 5, one model call per hypothesis", **rows["baseline_beam5"]},
        "ours": {"name": "decaylab beam 5 (batched over sentences and beams)", **rows["ours_beam5"]},
        "ours_greedy": rows["ours_greedy"],
        "setup": {
            "model": cfg.model.model_dump(), "vocab": tokenizer.get_vocab_size(), "train_steps": steps,
            "train_seconds": round(train_s, 1), "val_loss_after_training": history[-1]["val_loss"],
            "sentences": n_sent, "batch_size": 64, "length_penalty": gen.length_penalty,
            "max_len": f"floor(src_tokens * {gen.max_len_ratio}) + {gen.max_len_extra}", "repetitions": reps,
            "baseline_repetitions": baseline_reps,
            "bleu_signature": text_metrics(outputs["ours_greedy"][:1], refs[:1]).bleu_signature,
        },
        "machine": common.machine_info(device, threads, load_before),
        "command": common.command_line(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = common.write_result(NAME, result, args.out)
    print(f"trained {steps} steps in {train_s:.0f} s (val loss {history[-1]['val_loss']:.3f}); {n_sent} sentences")
    for name, row in rows.items():
        print(f"{name:<16}{row['sentences_per_s']:>8.1f} sent/s {row['ms_per_sentence']:>8.1f} ms/sent  "
              f"BLEU {row['bleu']:5.2f}  chrF {row['chrf']:5.1f}")
    print(f"beam5 / greedy time per sentence {beam_over_greedy:.2f} (goal <= {GOAL}); "
          f"textbook beam / ours beam {ratio:.1f}x; load {result['machine']['loadavg_1min_before_after']}; "
          f"wall {result['wall_s']} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
