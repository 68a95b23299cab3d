"""The bench's vLLM part as Markdown: the "vLLM vs local" table and the README rows."""

from __future__ import annotations

from typing import Any

TITLE = "## vLLM vs local (`serve`, same machine)"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def engine_label(part: dict[str, Any], name: str) -> str:
    """'local (4bit)' or 'vLLM 0.32.0 (bfloat16)'."""
    engine = part["engines"][name]
    if name == "local":
        return f"local engine ({engine.get('dtype') or 'n/a'})"
    return f"vLLM {engine.get('version') or '(version n/a)'} ({engine.get('dtype') or 'dtype n/a'})"


def _seconds(values: list[float | None]) -> str:
    return " / ".join("n/a" if v is None else f"{v / 1000:.1f}" for v in values) + " s"


def table_rows(part: dict[str, Any]) -> list[str]:
    """Engine rows, then the vLLM/local ratio row: single stream, combined tok/s by level, p50 latency by level."""
    levels = part["levels"]
    rows = [
        "| engine | single-stream tok/s | "
        + " | ".join(f"combined tok/s, {c} client{'s' if c > 1 else ''}" for c in levels)
        + f" | latency p50 at {' / '.join(map(str, levels))} clients |",
        "| --- | ---: | " + " | ".join("---:" for _ in levels) + " | ---: |",
    ]
    for name in ("local", "vllm"):
        engine = part["engines"][name]
        by_clients = {level["clients"]: level for level in engine["levels"]}
        rates = [by_clients[c]["tokens_per_s"] if c in by_clients else None for c in levels]
        latencies = [by_clients[c]["latency_ms_p50"] if c in by_clients else None for c in levels]
        rows.append(
            f"| {engine_label(part, name)} | {engine['single_stream']['tok_s']:.1f} | "
            + " | ".join("n/a" if r is None else f"{r:.1f}" for r in rates)
            + f" | {_seconds(latencies)} |"
        )
    ratios = part["vllm_vs_local"]
    rows.append(
        f"| vLLM / local | {_x(ratios['single_stream_tok_s'])} | "
        + " | ".join(_x(ratios["tok_s_by_clients"].get(str(c))) for c in levels)
        + " | "
        + " / ".join(_x(ratios["latency_ms_p50_by_clients"].get(str(c))) for c in levels)
        + " |"
    )
    return rows


def _server_line(part: dict[str, Any]) -> str:
    server = part["vllm_server"]
    if server["started_by_bench"]:
        how = f"started by the bench (`vllm start` path, ready in {server['start_s']:.0f} s) and stopped after"
    else:
        how = "already running before the bench (reused, left running)"
    return f"vLLM server: {how}."


def _load_line(part: dict[str, Any]) -> str:
    load = part["load_average"]
    per_engine = "; ".join(
        f"{name} {e['load_average']['before']:.1f} -> {e['load_average']['after']:.1f}"
        for name, e in part["engines"].items()
    )
    return (
        f"Load average (1 min): {load['start']:.1f} at the start, {load.get('after_vllm_start', 0):.1f} once vLLM "
        f"was up, {load['end']:.1f} at the end; first step -> last step per engine: {per_engine}."
    )


def markdown_rows(part: dict[str, Any]) -> list[str]:
    """The vLLM section of the full report."""
    if "skipped" in part:
        return [TITLE, "", f"skipped: {part['skipped']}", ""]
    p95 = "; ".join(
        f"{name} " + " / ".join(f"{level['latency_ms_p95'] / 1000:.1f}" for level in e["levels"]) + " s"
        for name, e in part["engines"].items()
    )
    return [
        TITLE,
        "",
        *table_rows(part),
        "",
        f"Latency p95 at {' / '.join(map(str, part['levels']))} clients: {p95}.",
        "",
        f"Method: {part['method']}. {part['single_stream_requests']} single-stream answers and "
        f"{part['requests_per_level']} requests per level for each engine. {_server_line(part)} "
        "vLLM serves bf16 weights; the local engine runs the product's default quantization.",
        "",
        _load_line(part),
        "",
    ]


def snippet_rows(part: dict[str, Any]) -> list[str]:
    """The README rows: single-stream and busiest-level tok/s, vLLM vs local."""
    if "skipped" in part:
        return [f"| vLLM vs local through `serve` | skipped: {part['skipped']} | |"]
    local, vllm = part["engines"]["local"], part["engines"]["vllm"]
    ratios = part["vllm_vs_local"]
    busiest = max(part["levels"])
    rate = {name: {lv["clients"]: lv["tokens_per_s"] for lv in e["levels"]} for name, e in part["engines"].items()}
    return [
        f"| `serve`, single-stream tok/s, vLLM vs local | {vllm['single_stream']['tok_s']:.1f} vs "
        f"{local['single_stream']['tok_s']:.1f} | {_x(ratios['single_stream_tok_s'])} |",
        f"| `serve`, combined tok/s at {busiest} clients, vLLM vs local | "
        f"{rate['vllm'].get(busiest, 0):.1f} vs {rate['local'].get(busiest, 0):.1f} | "
        f"{_x(ratios['tok_s_by_clients'].get(str(busiest)))} |",
    ]
