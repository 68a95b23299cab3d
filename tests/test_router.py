"""Router: fitting, abstention, storage without pickle, nearest examples (fake encoder)."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.classifier import MlpClassifier, SoftmaxClassifier, StoredRouter
from assistant.router import GENERAL, Router, decide
from assistant.router_fit import fingerprint, fit_router, fit_thresholds, load_or_fit_router
from data.labels import Example
from tests.fakes import HashingEncoder

CARE = [
    "糖尿病患者的照护内容有哪些",
    "脑卒中老人怎么护理",
    "帕金森病患者的照护",
    "骨折病人的护理要点",
    "卧床老人怎么翻身防压疮",
    "阿尔茨海默病老人的照护",
    "高血压老人的日常护理",
    "白内障术后护理",
    "how to care for a parent with dementia",
    "caring for a bedridden patient at home",
    "老人吞咽困难怎么喂饭",
    "婴儿发烧怎么护理",
]
GENERAL_TEXTS = [
    "梅西率迈阿密国际夺队史首冠",
    "今天股市大涨",
    "信用卡怎么还款",
    "python怎么读取文件",
    "明天天气怎么样",
    "给我讲个笑话",
    "房贷利率下调",
    "世界杯决赛结果",
    "how do I reset my bank password",
    "latest football news",
    "what is the capital of France",
    "推荐一部电影",
]


def examples() -> list[Example]:
    return [Example(t, "caregiving") for t in CARE] + [Example(t, GENERAL) for t in GENERAL_TEXTS]


def test_classifier_separates_training_data(encoder) -> None:
    x = encoder.encode([e.text for e in examples()])
    labels = [e.label for e in examples()]
    clf = SoftmaxClassifier.fit(x, labels)
    predicted = [clf.classes[i] for i in clf.predict_proba(x).argmax(axis=1)]
    assert predicted == labels
    assert np.allclose(clf.predict_proba(x).sum(axis=1), 1.0)


def test_decide_abstains_to_general_on_low_confidence_or_margin() -> None:
    classes = ("caregiving", GENERAL)
    assert decide(np.array([0.9, 0.1]), classes, 0.7, 0.3) == ("caregiving", "caregiving", False)
    assert decide(np.array([0.6, 0.4]), classes, 0.7, 0.0) == (GENERAL, "caregiving", True)
    assert decide(np.array([0.75, 0.25]), classes, 0.5, 0.6) == (GENERAL, "caregiving", True)
    # general never abstains: it is the fallback itself
    assert decide(np.array([0.45, 0.55]), classes, 0.9, 0.9) == (GENERAL, GENERAL, False)


def test_thresholds_rise_when_low_confidence_predictions_are_wrong() -> None:
    classes = ("caregiving", GENERAL)
    probs = np.array([[0.95, 0.05]] * 10 + [[0.6, 0.4]] * 10 + [[0.1, 0.9]] * 10)
    labels = ["caregiving"] * 10 + [GENERAL] * 20  # the 0.6 ones are really general
    conf, margin = fit_thresholds(probs, classes, labels)
    predicted = [decide(p, classes, conf, margin)[0] for p in probs]
    assert predicted == labels
    labels_ok = ["caregiving"] * 20 + [GENERAL] * 10  # now the 0.6 ones are right: no abstention needed
    conf_ok, margin_ok = fit_thresholds(probs, classes, labels_ok)
    assert conf_ok <= 0.6 and margin_ok <= 0.2


def test_route_returns_choice_with_candidates_and_nearest(encoder) -> None:
    fitted = fit_router(encoder, examples(), folds=3)
    router = Router(encoder, fitted.stored, {GENERAL: None, "caregiving": "caregiving"})
    choice = router.route("糖尿病患者的照护内容有哪些")
    assert choice.route == "caregiving" and choice.adapter == "caregiving"
    assert 0.5 < choice.confidence <= 1.0
    assert next(c.route for c in choice.candidates) == "caregiving"
    assert abs(sum(c.score for c in choice.candidates) - 1.0) < 1e-5
    assert choice.margin == pytest.approx(choice.candidates[0].score - choice.candidates[1].score, abs=1e-6)
    assert choice.nearest[0].text == "糖尿病患者的照护内容有哪些"
    assert choice.nearest[0].similarity == pytest.approx(1.0, abs=1e-2)
    general = router.route("梅西率迈阿密国际夺队史首冠")
    assert general.route == GENERAL and general.adapter is None


def test_stored_router_round_trips_without_pickle(encoder, tmp_path) -> None:
    fitted = fit_router(encoder, examples(), folds=3)
    fitted.stored.save(tmp_path)
    with np.load(tmp_path / "router.npz", allow_pickle=False) as arrays:
        assert set(arrays.files) >= {"weights", "bias", "mean", "scale", "example_vectors"}
    loaded = StoredRouter.load(tmp_path)
    x = encoder.encode(["骨折病人的护理要点", "今天股市大涨"])
    assert np.allclose(loaded.classifier.predict_proba(x), fitted.stored.classifier.predict_proba(x), atol=1e-6)
    assert (loaded.min_confidence, loaded.min_margin) == (fitted.stored.min_confidence, fitted.stored.min_margin)


def test_router_cache_is_reused_and_refitted_when_data_changes(encoder) -> None:
    first = load_or_fit_router(encoder, examples(), log=lambda s: None)
    again = load_or_fit_router(encoder, examples(), log=lambda s: None)
    assert not first.from_cache and again.from_cache
    more = [*examples(), Example("老人便秘怎么办", "caregiving")]
    assert fingerprint(encoder.name, more) != fingerprint(encoder.name, examples())
    assert not load_or_fit_router(encoder, more, log=lambda s: None).from_cache


def test_damaged_cache_is_refitted(encoder) -> None:
    from assistant.router_fit import router_cache_dir

    load_or_fit_router(encoder, examples(), log=lambda s: None)
    for file in router_cache_dir().rglob("router.npz"):
        file.write_bytes(b"garbage")
    assert not load_or_fit_router(encoder, examples(), log=lambda s: None).from_cache


def test_unknown_route_maps_to_adapter_of_same_name(encoder) -> None:
    fitted = fit_router(encoder, examples(), folds=3)
    router = Router(encoder, fitted.stored, {GENERAL: None})
    assert router.adapter_for("caregiving") == "caregiving"
    assert router.adapter_for(GENERAL) is None


def test_routing_and_similarity_search_may_use_different_encoders(encoder) -> None:
    class Counting(HashingEncoder):
        calls = 0

        def encode(self, texts):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            return super().encode(texts)

    fitted = fit_router(encoder, examples(), folds=3)
    assert Router(encoder, fitted.stored, {GENERAL: None}).search_encoder is encoder
    search = Counting()
    router = Router(encoder, fitted.stored, {GENERAL: None, "caregiving": "caregiving"}, search_encoder=search)
    assert router.search_encoder is search
    assert router.route("骨折病人的护理要点").route == "caregiving"
    assert Counting.calls == 0  # routing never encodes with the search encoder


def test_mlp_head_fits_stores_and_loads_without_pickle(encoder, tmp_path) -> None:
    fitted = fit_router(encoder, examples(), folds=3, head="mlp")
    assert isinstance(fitted.stored.classifier, MlpClassifier)
    assert fitted.stored.metrics["head"] == "mlp"
    x = encoder.encode([e.text for e in examples()])
    predicted = [fitted.stored.classifier.classes[i] for i in fitted.stored.classifier.predict_proba(x).argmax(axis=1)]
    assert predicted == [e.label for e in examples()]
    fitted.stored.save(tmp_path)
    with np.load(tmp_path / "router.npz", allow_pickle=False) as arrays:
        assert set(arrays.files) >= {"w1", "b1", "w2", "b2", "mean", "scale", "example_vectors"}
    loaded = StoredRouter.load(tmp_path)
    assert isinstance(loaded.classifier, MlpClassifier)
    assert np.allclose(loaded.classifier.predict_proba(x), fitted.stored.classifier.predict_proba(x), atol=1e-6)


def test_mlp_fit_is_deterministic(encoder) -> None:
    x = encoder.encode([e.text for e in examples()])
    labels = [e.label for e in examples()]
    first, second = MlpClassifier.fit(x, labels, epochs=50), MlpClassifier.fit(x, labels, epochs=50)
    assert np.array_equal(first.predict_proba(x), second.predict_proba(x))


def test_head_is_part_of_the_cache_key_and_linear_keeps_its_old_key(encoder) -> None:
    ex = examples()
    assert fingerprint(encoder.name, ex) == fingerprint(encoder.name, ex, "linear")
    assert fingerprint(encoder.name, ex, "mlp") != fingerprint(encoder.name, ex)
    linear = load_or_fit_router(encoder, ex, log=lambda s: None)
    mlp = load_or_fit_router(encoder, ex, log=lambda s: None, head="mlp")
    assert not mlp.from_cache and isinstance(mlp.stored.classifier, MlpClassifier)
    assert isinstance(linear.stored.classifier, SoftmaxClassifier)
    assert load_or_fit_router(encoder, ex, log=lambda s: None, head="mlp").from_cache


def test_format_1_router_loads_as_linear_and_unknown_head_is_refused(encoder, tmp_path) -> None:
    import json

    fit_router(encoder, examples(), folds=3).stored.save(tmp_path)
    meta = json.loads((tmp_path / "router.json").read_text("utf-8"))
    del meta["head"]
    meta["format"] = 1
    (tmp_path / "router.json").write_text(json.dumps(meta), "utf-8")
    assert isinstance(StoredRouter.load(tmp_path).classifier, SoftmaxClassifier)
    meta["format"], meta["head"] = 2, "forest"
    (tmp_path / "router.json").write_text(json.dumps(meta), "utf-8")
    with pytest.raises(ValueError, match="head"):
        StoredRouter.load(tmp_path)
    with pytest.raises(ValueError, match="head"):
        fit_router(encoder, examples(), head="forest")
