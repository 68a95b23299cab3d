"""Pure helpers that turn routing decisions into the words and colour levels the TUI shows."""

from __future__ import annotations

from typing import Any

from assistant.session import Done, RouteChosen

#: Badge colour thresholds; "high" matches the sticky-routing rule (a follow-up switches route only at >= 0.90).
HIGH = 0.90
MID = 0.70


def routing_record(chosen: RouteChosen) -> dict[str, Any]:
    """Everything `/why` needs about one answer, as plain JSON (saved with the message)."""
    record = chosen.choice.as_json()
    record.update(
        adapter=chosen.adapter,  # what actually answers: None when the route's adapter is not installed
        predicted=chosen.choice.predicted,
        forced=chosen.forced,
        sticky=chosen.sticky,
        warning=chosen.warning,
    )
    return record


def with_sources(record: dict[str, Any], done: Done) -> dict[str, Any]:
    """The routing record plus the knowledge entries the answer was given and how many sentences were withheld."""
    passages = [{**p.as_json(), "text": p.text} for p in done.sources]
    return {**record, "sources": passages, "withheld": done.withheld}


def sources_text(record: dict[str, Any] | None) -> str:
    """The line under an answer naming its knowledge entries ('' when it had none)."""
    sources = (record or {}).get("sources") or []
    if not sources:
        return ""
    return "sources: " + " · ".join(str(s["title"]) for s in sources)


def confidence_level(record: dict[str, Any] | None) -> str:
    """'forced', 'high', 'mid' or 'low': the badge's CSS class suffix."""
    if not record:
        return "low"
    if record.get("forced"):
        return "forced"
    confidence = route_score(record)
    return "high" if confidence >= HIGH else "mid" if confidence >= MID else "low"


def badge_text(record: dict[str, Any] | None, ending: str = "") -> str:
    """`● caregiving · adapter caregiving · 95%` plus flags (forced, kept, unsure) and how it ended early.

    `ending` is "" (complete), "stopped" (Esc), "failed" or "interrupted" (the app closed mid-answer).
    """
    if not record:
        text = "● route unknown"
    else:
        adapter = record.get("adapter")
        parts = [str(record.get("route")), f"adapter {adapter}" if adapter else "base"]
        if record.get("forced"):
            parts.append("forced")
        else:
            parts.append(f"{route_score(record):.0%}")
        if record.get("sticky"):
            parts.append(
                f"kept for follow-up (router: {record.get('predicted')} {float(record.get('confidence') or 0):.0%})"
            )
        if record.get("abstained"):
            parts.append(f"unsure ({record.get('predicted')}?)")
        text = "● " + " · ".join(parts)
    text = f"{text} · {ending}" if ending else text
    sources = sources_text(record)
    return f"{text}\n  {sources}" if sources else text


def route_score(record: dict[str, Any]) -> float:
    """How sure the router was of the route actually taken.

    Usually the choice's confidence; for a sticky follow-up the session keeps the previous route while
    `confidence` is the router's score for the route it preferred, so take the kept route's own score.
    """
    confidence = float(record.get("confidence") or 0.0)
    if record.get("sticky"):
        for candidate in record.get("candidates") or []:
            if candidate.get("route") == record.get("route"):
                return float(candidate.get("score") or 0.0)
    return confidence


def human_size(size_bytes: int) -> str:
    """1536 -> '1.5 KB'; 0 -> '?' (unknown)."""
    if size_bytes <= 0:
        return "?"
    size = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def short_date(iso: str) -> str:
    """'2025-11-20T08:00:00+00:00' -> '2025-11-20'; '' -> 'unknown'."""
    return iso[:10] if iso else "unknown"
