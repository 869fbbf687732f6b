"""decaylab.evaluation.significance: the paired bootstrap of losses and sacrebleu's paired bootstrap of BLEU."""

from __future__ import annotations

import numpy as np
import pytest

from decaylab.evaluation.significance import bleu_paired_bootstrap, paired_bootstrap


def test_identical_systems_differ_by_nothing() -> None:
    a = np.random.default_rng(0).normal(2.0, 1.0, 300)
    result = paired_bootstrap(a, a)
    assert result.difference == 0.0 and result.ci_low == 0.0 == result.ci_high
    assert result.p_value == 1.0


def test_a_consistent_shift_is_found_and_its_ci_covers_it() -> None:
    rng = np.random.default_rng(1)
    b = rng.normal(2.0, 1.0, 400)
    a = b + 0.05 + rng.normal(0.0, 0.02, 400)  # paired: tiny noise around a shift that unpaired noise would hide
    result = paired_bootstrap(a, b, resamples=1000, seed=3)
    assert result.ci_low < 0.05 < result.ci_high and result.ci_low > 0
    assert result.p_value < 0.01
    assert result == paired_bootstrap(a, b, resamples=1000, seed=3)  # seeded: the same resamples


def test_noise_alone_is_not_significant_most_of_the_time() -> None:
    rng = np.random.default_rng(2)
    p_values = [paired_bootstrap(rng.normal(0, 1, 200), rng.normal(0, 1, 200), resamples=300, seed=s).p_value
                for s in range(40)]
    assert 0.0 < np.mean(np.array(p_values) < 0.05) <= 0.15  # about 5 % false positives, not many more


def test_weights_give_the_corpus_loss_per_token() -> None:
    sums, tokens = np.array([3.0, 10.0, 1.0]), np.array([1.0, 5.0, 2.0])
    result = paired_bootstrap(sums, np.zeros(3), tokens)
    assert result.a == pytest.approx(14.0 / 8.0) and result.difference == pytest.approx(14.0 / 8.0)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="equally long"):
        bleu_paired_bootstrap(["a"], ["a", "b"], ["a"])


def test_bleu_goes_through_sacrebleu_and_restores_its_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SACREBLEU_SEED", "7")
    refs = ["the cat sat on the mat .", "a dog barked at the moon tonight ."] * 20
    worse = ["the cat sat .", "a dog barked ."] * 20
    result = bleu_paired_bootstrap(refs, worse, refs, resamples=200)
    assert result["bleu_a"] == pytest.approx(100.0) and result["bleu_b"] < 50
    assert result["p_value"] < 0.01 and "bs:200" in result["signature"] and "seed:12345" in result["signature"]
    same = bleu_paired_bootstrap(worse, worse, refs, resamples=200)
    # sacrebleu gives identical systems p = 1/(n+1) (it counts resamples strictly above a zero difference); no
    # difference is nothing to call significant: p = 1, sacrebleu's own value kept beside it
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    assert same["p_value_sacrebleu"] == pytest.approx(1 / 201)
    zeros = bleu_paired_bootstrap(["xyz"] * 40, ["qqq"] * 40, refs, resamples=200)  # both BLEU 0
    assert zeros["bleu_a"] == zeros["bleu_b"] == 0.0 and zeros["p_value"] == 1.0
    import os

    assert os.environ["SACREBLEU_SEED"] == "7"
