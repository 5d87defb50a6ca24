"""Metrics against hand-computed values."""
import math

import pytest

from adapterkit.metrics import (
    METRIC_SETS, accuracy, compute_metrics, f1, higher_is_better, matthews_corrcoef,
    normalize_answer, pearson, rankdata, spearman, squad_exact_match, squad_f1, squad_scores)


def test_accuracy():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75


def test_binary_f1():
    # tp=2 (idx 0, 3), fp=1 (idx 1), fn=1 (idx 4): 2*2 / (2*2 + 1 + 1)
    assert f1([1, 1, 0, 1, 0], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    assert f1([0, 0], [0, 0]) == 0.0                    # no positives at all
    assert f1(["a", "b"], ["a", "a"], pos_label="a") == pytest.approx(2 / 3)


def test_macro_f1():
    # class 0: tp=1 fp=0 fn=1 -> 2/3; class 1: tp=1 fp=1 fn=0 -> 2/3; class 2: tp=1 -> 1
    preds, refs = [0, 1, 1, 2], [0, 0, 1, 2]
    assert f1(preds, refs, average="macro") == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="average"):
        f1(preds, refs, average="micro")


def test_matthews():
    # tp=2 tn=1 fp=1 fn=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(1 / 6)
    assert matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0          # constant prediction


def test_pearson():
    # dx = [-1, 0, 1], dy = [-7/3, -1/3, 8/3]: 5 / sqrt(2 * 114/9)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228))
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0                    # undefined -> 0.0


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 20, 5]).tolist() == [2.0, 4.0, 4.0, 4.0, 1.0]
    assert rankdata([3, 1, 2]).tolist() == [3.0, 1.0, 2.0]


def test_spearman_with_ties():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)   # monotone
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.parametrize("raw, normal", [
    ("The Cat!", "cat"),
    ("  an   apple, a day ", "apple day"),
    ("theater", "theater"),                       # articles only as whole words
    ("A.B.C.", "abc"),
    ("Denver Broncos.", "denver broncos"),
    ("rock 'n' roll", "rock n roll"),
    ("the", ""),
])
def test_squad_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_squad_em_f1():
    assert squad_exact_match("the Denver Broncos", "Denver Broncos.") == 1.0
    # tokens [big, cat, sat] vs [cat, sat, down]: p = r = 2/3
    assert squad_f1("the big cat sat", "a cat sat down") == pytest.approx(2 / 3)
    assert squad_f1("dog", "cat") == 0.0
    assert squad_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)    # counts matter


def test_squad_scores_take_max_over_gold():
    preds = ["Denver Broncos", "big cat"]
    refs = [["Broncos", "the Denver Broncos"], {"text": ["cat", "dog"], "answer_start": [0, 4]}]
    out = squad_scores(preds, refs)
    assert out["exact_match"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_compute_metrics_sets():
    out = compute_metrics("accuracy", [1, 0], [1, 1])
    assert out == {"accuracy": 0.5, "main": 0.5}
    out = compute_metrics("f1_accuracy", [1, 1, 0, 1, 0], [1, 0, 0, 1, 1])
    assert out["main"] == out["f1"] == pytest.approx(2 / 3) and out["accuracy"] == 0.6
    out = compute_metrics("mcc", [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert out["main"] == out["mcc"] == pytest.approx(1 / 6)
    out = compute_metrics("pearson_spearman", [1, 2, 2, 3], [1, 3, 2, 4])
    assert out["main"] == out["pearson"] and out["spearman"] == pytest.approx(math.sqrt(0.9))
    out = compute_metrics("squad", ["a cat"], [{"answers": {"text": ["the cat"], "answer_start": [0]}}])
    assert out == {"exact_match": 1.0, "f1": 1.0, "main": 1.0}
    out = compute_metrics("perplexity", math.log(20.0))
    assert out["perplexity"] == pytest.approx(20.0) and out["main"] == out["perplexity"]
    assert compute_metrics("perplexity", [1.0, 3.0])["loss"] == 2.0
    for name, (keys, main) in METRIC_SETS.items():
        assert main in keys


def test_higher_is_better():
    assert higher_is_better("accuracy") and higher_is_better("squad")
    assert not higher_is_better("perplexity")
    with pytest.raises(ValueError, match="unknown metric set"):
        higher_is_better("bleu")


def test_input_errors():
    with pytest.raises(ValueError, match="equal length"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics("accuracy", [], [])
    with pytest.raises(ValueError, match="unknown metric set"):
        compute_metrics("bleu", ["a"], ["a"])
    with pytest.raises(ValueError, match="predictions for"):
        squad_scores(["a"], [])
