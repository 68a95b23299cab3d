"""The bench's product part as Markdown: whole answers vs llama.cpp, a conversation by turn, a long paste."""

from __future__ import annotations

from typing import Any

ROUTES = {"general": "general route (base)", "adapter": "caregiving route (adapter)"}
VARIANTS = {
    "ours": "ours (the product)",
    "transformers_forward": "ours through transformers' own forward (the engine before this change)",
    "packed_attention": "prototype: single-token attention packed per key/value head (other rounding)",
}


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def headline_rows(p: dict[str, Any]) -> list[str]:
    """Whole-answer ratios to llama.cpp, for the report's headline table."""
    vs = p["answers"].get("vs_llama_cpp", {}).get("ours", {})
    return [f"| whole answers as `ask` gives them vs llama.cpp, {ROUTES[k]} | {_x(v)} |" for k, v in vs.items()]


def answer_rows(a: dict[str, Any]) -> list[str]:
    """Whole-answer tok/s per route and variant, with the ratio to llama.cpp."""
    peer = a["tok_s"].get("llama_cpp", {})
    rows = [
        "| route | prompt tokens | engine | tok/s (whole answer) | vs llama.cpp | same answers as the product |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for route, label in ROUTES.items():
        prompt = a["prompt_tokens_median"].get(route)
        if prompt is None:
            continue
        for name, speeds in a["tok_s"].items():
            if route not in speeds:
                continue
            ratio = a.get("vs_llama_cpp", {}).get(name, {}).get(route) if name != "llama_cpp" else 1.0
            same = a["same_answers_as_product"].get(name)
            rows.append(
                f"| {label} | {prompt:.0f} | {VARIANTS.get(name, 'llama.cpp, same GGUF and prompt ids')} | "
                f"{speeds[route]:.1f} | {_x(ratio) if peer else 'n/a'} | "
                f"{'' if same is None else f'{same:.0%}'} |"
            )
    return rows


def conversation_rows(c: dict[str, Any]) -> list[str]:
    rows = [
        "| turn | prompt tokens | reused from the previous turn | first token, kept keys/values | "
        "first token, whole conversation prefilled |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    rows += [
        f"| {t['turn']} | {t['prompt_tokens']} | {t['cached_tokens']} | {t['ttft_s']:.2f} s | "
        f"{t['ttft_s_full_prefill']:.2f} s |"
        for t in c["turns"]
    ]
    return rows


def markdown_rows(p: dict[str, Any]) -> list[str]:
    """The '## As users meet it' section of the full report."""
    a, c, long = p["answers"], p["conversation"], p["long_paste"]
    out = [
        "## As users meet it: whole answers, a conversation, a long paste",
        "",
        f"Engine forward: {p['forward']}; context {p['context_tokens']} tokens; adapters {', '.join(p['adapters'])}.",
        "",
        f"Whole answers through ChatSession (what `ask --json` runs: router, safety rules, knowledge passages, "
        f"engine), up to 128 tokens, greedy, median of {a['rounds']} interleaved round(s) over "
        f"{len(a['questions'])} questions; llama.cpp gets the very prompt ids our engine rendered and generates "
        "as many tokens; both keep what they computed for the previous prompt (prefix reuse), as servers do. "
        "tok/s = answer tokens / wall time of the whole answer (routing and prefill included).",
        "",
        *answer_rows(a),
        "",
        f"A {len(c['turns'])}-turn conversation ({c['new_tokens']}-token answers, adapter {c['adapter']}): turn "
        f"{len(c['turns'])}'s first token took {_x(c['last_vs_first_ttft'])} turn 1's.",
        "",
        replay_text(c, a.get("llama_cpp_replay")),
        "",
        *conversation_rows(c),
        "",
    ]
    if "skipped" in long:
        out += [f"Long paste: skipped ({long['skipped']}).", ""]
    else:
        growth = long["rss_growth_mib"]
        out += [
            f"A pasted {long['characters']:,}-character line, `ask --json --max-new-tokens 8` style: the prompt was "
            f"cut to {long['prompt_tokens']} tokens (context {long['context_tokens']}; "
            f"{long['kept_chars'] or 0:,} characters kept), first token after {long['first_token_s']:.1f} s "
            f"(routing and retrieval {long['routing_s']:.1f} s of it), resident memory growth "
            f"{'n/a' if growth is None else f'{growth:,.0f} MiB'}.",
            "",
        ]
    return out


def replay_text(c: dict[str, Any], peer: dict[str, Any] | None) -> str:
    """What replaying the conversation with nothing kept gave, and why answers can part, with llama.cpp's figure."""
    agreed = sorted(c.get("agreed_chars_replayed", []))
    middle = f" (the answers agree for their first {agreed[len(agreed) // 2]} characters, median)" if agreed else ""
    text = (
        f"Replayed with nothing kept (every turn prefilled whole), {len(c['same_answers_replayed'])} of "
        f"{len(c['turns'])} answers came out the same token for token{middle}. Kept keys/values were computed "
        "in other slices (a turn at a time, an answer a token at a time), so their last bits round differently "
        "and a near tie between two tokens can flip; the tests check exact equality where the arithmetic is "
        "exact (float32 on the tiny models: cached, route switch, eviction)."
    )
    if peer:
        text += (
            f" llama.cpp on the same GGUF does the same: with a kept prefix vs the whole prompt prefilled, "
            f"{peer['same']} of {peer['prompts']} of the answers above came out the same ({peer['new_tokens']} tokens)."
        )
    return text


def snippet_rows(p: dict[str, Any]) -> list[str]:
    """The README rows of the product part."""
    a, c, long = p["answers"], p["conversation"], p["long_paste"]
    rows = []
    for route, label in ROUTES.items():
        ours = a["tok_s"].get("ours", {}).get(route)
        peer = a["tok_s"].get("llama_cpp", {}).get(route)
        if ours is None:
            continue
        ratio = a.get("vs_llama_cpp", {}).get("ours", {}).get(route)
        peer_text = f" vs {peer:.1f}" if peer else ""
        rows.append(
            f"| whole answers, {label}, tok/s ours{' vs llama.cpp' if peer else ''} | "
            f"{ours:.1f}{peer_text} | {_x(ratio)} |"
        )
        before = a["tok_s"].get("transformers_forward", {}).get(route)
        if before:
            rows.append(
                f"| same, through transformers' own forward (before) | {before:.1f} | "
                f"{_x(a['vs_llama_cpp']['transformers_forward'].get(route)) if peer else 'n/a'} |"
            )
    turns = c["turns"]
    rows.append(
        f"| conversation, first token turn 1 / turn {len(turns)} ({turns[-1]['prompt_tokens']} tokens) | "
        f"{turns[0]['ttft_s']:.2f} / {turns[-1]['ttft_s']:.2f} s | {_x(c['last_vs_first_ttft'])} |"
    )
    rows.append(
        f"| same turn {len(turns)}, whole conversation prefilled | {turns[-1]['ttft_s_full_prefill']:.2f} s | |"
    )
    if "skipped" not in long:
        growth = long["rss_growth_mib"]
        rows.append(
            f"| pasted {long['characters']:,}-character line: first token, memory growth | "
            f"{long['first_token_s']:.1f} s, {'n/a' if growth is None else f'{growth:,.0f} MiB'} | |"
        )
    return rows
