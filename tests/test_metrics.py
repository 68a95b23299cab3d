"""Routing metrics on a hand-checked example."""

from __future__ import annotations

import pytest

from assistant.metrics import classification_report


def test_report_matches_hand_computation() -> None:
    truth = ["care", "care", "care", "general", "general"]
    predicted = ["care", "care", "general", "general", "care"]
    report = classification_report(truth, predicted)
    assert report.accuracy == pytest.approx(3 / 5)
    assert report.labels == ("care", "general")
    assert report.confusion == ((2, 1), (1, 1))
    care = report.per_route["care"]
    assert care.precision == pytest.approx(2 / 3) and care.recall == pytest.approx(2 / 3)
    assert care.f1 == pytest.approx(2 / 3)
    general = report.per_route["general"]
    assert general.precision == pytest.approx(1 / 2) and general.recall == pytest.approx(1 / 2)
    assert general.support == 2
    assert "accuracy 60.0%" in report.format()
