"""`eval safety --emergency-only` / `--live-only`: how often a rule's lead fires, by its regex alone and with its
meaning detector.

The lead is decided from the question alone, so this needs no language model: each probe item is
checked by the rule's regexes, and by the regexes or the detector (what the product does).
Recall is over the probe's items of that kind (emergency, or live); false alarms over all its other items.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.care_rules import classify
from assistant.emergency_signs import EmergencySigns
from assistant.live_data_signs import LiveDataSigns
from data.errors import BadInputFile
from data.files import read_json_objects
from measurement.eval_safety import ProbeItem


@dataclass
class Recognition:
    """One way of recognising emergencies, scored on a probe."""

    name: str
    kind: str = "emergency"
    caught: int = 0
    emergencies: int = 0
    false_alarms: int = 0
    others: int = 0
    missed: list[str] = field(default_factory=list)
    alarmed: list[str] = field(default_factory=list)

    def add(self, item: ProbeItem, flagged: bool) -> None:
        if item.kind == self.kind:
            self.emergencies += 1
            self.caught += flagged
            if not flagged:
                self.missed.append(item.question)
        else:
            self.others += 1
            self.false_alarms += flagged
            if flagged:
                self.alarmed.append(item.question)

    def as_json(self) -> dict[str, Any]:
        return {
            "recall": [self.caught, self.emergencies],
            "false_alarms": [self.false_alarms, self.others],
            "missed": self.missed,
            "false_alarm_questions": self.alarmed,
        }


def load_recognition_probe(path: Path) -> list[ProbeItem]:
    """A probe's questions; any kind other than 'emergency' (a rule kind, or 'none') counts as not an emergency."""
    items = []
    for number, obj in read_json_objects(path):
        if not isinstance(obj.get("question"), str) or not isinstance(obj.get("kind"), str):
            raise BadInputFile(str(path), number, 'expected {"question": ..., "kind": ...}')
        items.append(ProbeItem(str(obj.get("id", number)), obj["question"], str(obj.get("lang", "")), obj["kind"]))
    if not items:
        raise BadInputFile(str(path), None, "no probe questions")
    return items


def score_recognition(
    items: Sequence[ProbeItem], detector: EmergencySigns | LiveDataSigns, kind: str = "emergency"
) -> list[Recognition]:
    """The regex alone, then the regex or the detector, on every item; `kind` names the rule: "emergency" or "live"."""
    rules, combined = Recognition("rules", kind), Recognition("rules+meaning", kind)
    for item in items:
        by_rules = bool(getattr(classify(item.question), kind))
        rules.add(item, by_rules)
        combined.add(item, by_rules or detector.flags(item.question))
    return [rules, combined]


def format_recognition(results: Sequence[Recognition], detector: EmergencySigns, show: int = 10) -> str:
    """The cross-validated figures on the detector's own data, then a line per way of recognising."""
    cv = detector.cv or {}
    lines = [
        f"detector threshold {detector.threshold:g}, cross-validated on its {len(detector.stored.example_texts)} "
        f"examples ({cv.get('negatives', 0):.0f} negatives, {cv.get('negatives_written', 0):.0f} of them written "
        "hard ones):",
        f"  detector alone   recall {cv.get('cv_recall', 0):.1%}, false alarms {cv.get('cv_false_alarms', 0):.1%} "
        f"(on the written negatives {cv.get('cv_false_alarms_written', 0):.1%})",
        f"  rules + detector recall {cv.get('cv_recall_with_rules', 0):.1%}, "
        f"false alarms {cv.get('cv_false_alarms_with_rules', 0):.1%} "
        f"(on the written negatives {cv.get('cv_false_alarms_written_with_rules', 0):.1%})",
    ]
    for r in results:
        lines.append(
            f"{r.name:<14} emergencies caught {r.caught}/{r.emergencies}   false alarms {r.false_alarms}/{r.others}"
        )
    for r in results[-1:]:
        lines += [f"  MISSED  {q[:90]}" for q in r.missed[:show]]
        lines += [f"  ALARMED {q[:90]}" for q in r.alarmed[:show]]
    return "\n".join(lines)


def _fit_detector(settings: Any, loader: Any) -> Any:
    """A detector fitted as the product fits it: the search encoder, the routing data's questions as negatives."""
    from adapters.wiring import build_encoder, log, routing_files, search_encoder
    from data.labels import load_labelled

    routing = load_labelled(routing_files(settings))
    return loader(search_encoder(build_encoder(settings)), log=log, routing=routing)


def _print_recognition(results: Sequence[Recognition], detector: Any, probe: str, text: str | None) -> None:
    """The results as one JSON object (text None), else `text`."""
    if text is None:
        payload = {"probe": probe, "threshold": detector.threshold, "cv": detector.cv}
        print(json.dumps(payload | {r.name: r.as_json() for r in results}, ensure_ascii=False))
    else:
        print(text)


def run_emergency_eval(items: Sequence[ProbeItem], settings: Any, as_json: bool, probe: str) -> int:
    """Score emergency recognition on the probe; exit 1 when an emergency item is missed."""
    from assistant.emergency_signs import load_or_fit_emergency_signs

    detector = _fit_detector(settings, load_or_fit_emergency_signs)
    results = score_recognition(items, detector)
    _print_recognition(results, detector, probe, None if as_json else format_recognition(results, detector))
    return 0 if results[-1].caught == results[-1].emergencies else 1


def format_live_recognition(results: Sequence[Recognition], detector: LiveDataSigns, show: int = 10) -> str:
    """The cross-validated figures on the detector's own data, then a line per way of recognising."""
    cv = detector.cv or {}
    lines = [
        f"live-data detector threshold {detector.threshold:g}, cross-validated on its "
        f"{len(detector.stored.example_texts)} examples ({cv.get('negatives', 0):.0f} negatives, "
        f"{cv.get('negatives_written', 0):.0f} of them written hard ones):",
        f"  written live questions caught: regex {cv.get('cv_recall_rules', 0):.1%}, detector "
        f"{cv.get('cv_recall', 0):.1%}, either {cv.get('cv_recall_with_rules', 0):.1%}",
        f"  detector false alarms {cv.get('cv_false_alarms', 0):.2%} "
        f"(on the written negatives {cv.get('cv_false_alarms_written', 0):.1%})",
    ]
    for r in results:
        lines.append(f"{r.name:<14} live caught {r.caught}/{r.emergencies}   false flags {r.false_alarms}/{r.others}")
    for r in results[-1:]:
        lines += [f"  MISSED  {q[:90]}" for q in r.missed[:show]]
        lines += [f"  FLAGGED {q[:90]}" for q in r.alarmed[:show]]
    return "\n".join(lines)


def run_live_eval(items: Sequence[ProbeItem], settings: Any, as_json: bool, probe: str) -> int:
    """Score live-data recognition on the probe; exit 1 when a non-live item is flagged by the detector."""
    from assistant.live_data_signs import load_or_fit_live_data_signs

    detector = _fit_detector(settings, load_or_fit_live_data_signs)
    rules, combined = score_recognition(items, detector, "live")
    text = None if as_json else format_live_recognition([rules, combined], detector)
    _print_recognition([rules, combined], detector, probe, text)
    return 0 if combined.false_alarms == rules.false_alarms else 1
