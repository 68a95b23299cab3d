"""The bench result as Markdown (full table and the README snippet) and files in the output folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from measurement.bench.report_product import headline_rows, snippet_rows
from measurement.bench.report_product import markdown_rows as product_rows
from measurement.bench.report_vllm import markdown_rows as vllm_rows
from measurement.bench.report_vllm import snippet_rows as vllm_snippet_rows


def _x(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}x"


def _n(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def _machine_line(r: dict[str, Any]) -> str:
    m = r["machine"]
    v = m["versions"]
    load = m.get("load_average", {})
    return (
        f"{m['cpu']}, {m['cores_physical']} cores / {m['cores_logical']} threads, {m['ram_gib']} GiB RAM, "
        f"avx512_bf16: {'yes' if m['avx512_bf16'] else 'no'}; torch {v.get('torch')}, "
        f"transformers {v.get('transformers')}, peft {v.get('peft')}, bitsandbytes {v.get('bitsandbytes')}, "
        f"llama-cpp-python {v.get('llama-cpp-python') or 'not installed'}; load average "
        f"{load.get('start', 0):.1f} at start, {load.get('end', 0):.1f} at end; {r['date']}"
        + (f"; commit {m['git_commit']}" if m.get("git_commit") else "")
    )


def _generation_rows(g: dict[str, Any]) -> list[str]:
    peer = g["variants"].get("llama_cpp", {})
    peer_rate = peer.get("decode_tok_s")
    rows = [
        "| engine | first token (s) | decode tok/s | vs llama.cpp | tokens | spread |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, v in g["variants"].items():
        if "skipped" in v:
            rows.append(f"| {key} | skipped: {v['skipped']} | | | | |")
            continue
        vs = _x(v["decode_tok_s"] / peer_rate) if peer_rate else "n/a"
        rows.append(
            f"| {v['label']} | {v['ttft_s']:.3f} | {v['decode_tok_s']:.1f} | {vs} | "
            f"{v['new_tokens']:.0f} | {v['decode_spread']:.0%} |"
        )
    return rows


def _router_prototype(rt: dict[str, Any]) -> str:
    p = rt.get("prototype")
    if not p:
        return ""
    return (
        f"Prototype router ({p['changes']}): one query p50 {p['single_ms_p50']:.1f} ms, "
        f"p95 {p['single_ms_p95']:.1f} ms (encode {p['encode_ms_p50']:.1f} ms, classify {p['classify_ms_p50']:.2f} ms, "
        f"vs {rt['classify_ms_p50']:.2f} ms as wired and {rt['classify_ms_p50_fp32_examples']:.2f} ms with only the "
        f"float32 matrix); same route for {p['same_route_share']:.0%} of the queries."
    )


def _generation_notes(g: dict[str, Any]) -> list[str]:
    notes = []
    for key in ("int4_torch",):
        v = g["variants"].get(key)
        if v and "same_answer_share" in v:
            notes.append(
                f"{v['label']}: {v['decode_tok_s'] / g['variants']['nf4']['decode_tok_s']:.2f}x the NF4 decode speed; "
                f"its greedy answer matches the product's for {v['same_answer_share']:.0%} of the text."
            )
    sweep = g.get("thread_sweep_decode_tok_s")
    for name, by_count in (sweep or {}).items():
        notes.append(
            f"{name} decode by thread count (interleaved, {min(g['new_tokens'], 64)} tokens): "
            + ", ".join(f"{c} thread(s) {r:.1f} tok/s" for c, r in by_count.items())
            + (f"; OMP_WAIT_POLICY={g.get('omp_wait_policy') or 'unset'}" if name == "nf4" else "")
            + "."
        )
    by_length = g.get("nf4_ttft_s_by_prompt_tokens")
    if by_length:
        notes.append(
            "NF4 time to first token by prompt length (a prompt nothing kept covers, prefilled from scratch): "
            + ", ".join(f"{n} tokens {s:.2f} s" for n, s in by_length.items())
            + "."
        )
    return ["", *(f"- {n}" for n in notes)] if notes else []


def _profile_rows(p: dict[str, Any]) -> list[str]:
    rows = [
        f"One decode step of the NF4 base: {p['step_ms']:.1f} ms ({p['threads']} threads); torch ops "
        f"{p['op_ms_per_step']:.1f} ms, outside ops (Python, module glue) ~{p['outside_ops_ms_per_step']:.1f} ms.",
        "",
        "| kind | ms per step |",
        "| --- | ---: |",
    ]
    rows += [f"| {k} | {v:.2f} |" for k, v in p["kinds_ms_per_step"].items()]
    rows += ["", "| top op | shapes | calls/step | ms/step | share |", "| --- | --- | ---: | ---: | ---: |"]
    rows += [
        f"| {o['op']} | `{o['shapes']}` | {o['calls_per_step']:.0f} | {o['self_ms_per_step']:.2f} | "
        f"{o['share_of_op_time']:.0%} |"
        for o in p["top_ops"]
    ]
    return rows


def markdown(r: dict[str, Any]) -> str:
    """The full report (docs/benchmarks/latest.md)."""
    g, rt, a, t = r["generation"], r["router"], r["adapters"], r["training"]
    ratios = g["ratios"]
    out = [
        f"# Benchmarks ({'quick' if r['quick'] else 'full'} run, {r['date'][:10]})",
        "",
        f"Machine: {_machine_line(r)}.",
        "",
    ]
    if r["notes"]:
        out += [*(f"- note: {n}" for n in r["notes"]), ""]
    out += [
        "## Headline ratios",
        "",
        "| ratio | value |",
        "| --- | ---: |",
        *(headline_rows(r["product"]) if "product" in r else []),
        f"| our NF4 decode vs llama.cpp (same GGUF, same threads; goal >= {g['decode_goal_vs_llama_cpp']}x) | "
        f"{_x(ratios['nf4_vs_llama_cpp_decode'])} |",
        f"| NF4 vs bf16 decode | {_x(ratios['nf4_vs_bf16_decode'])} |",
        f"| NF4 + LoRA vs NF4 decode | {_x(ratios['nf4_lora_vs_nf4_decode'])} |",
    ]
    if "skipped" not in a:
        out.append(
            f"| memory: 10 merged bf16 models vs base + 10 adapters | {_x(a['ten_merged_vs_ten_adapters'], 1)} |"
        )
    out += [
        f"| router p50 per query (encode + classify; target {rt['target_ms']:.0f} ms) | {rt['single_ms_p50']:.1f} ms |",
        "",
    ]
    out += [
        f"## Generation: {g['prompt_tokens']}-token prompt, {g['new_tokens']} new tokens, greedy, "
        f"median of {g['repeats']} interleaved rounds, {g['threads']} threads",
        "",
        *_generation_rows(g),
        "",
        "Decode tok/s counts the forwards after the first token; spread = (max - min) / median of the rounds.",
        *_generation_notes(g),
        "",
    ]
    if "product" in r:
        out += product_rows(r["product"])
    out += [
        "## Router",
        "",
        "| single query p50 | p95 | encode p50 | classify p50 | batched | encoder |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {rt['single_ms_p50']:.1f} ms | {rt['single_ms_p95']:.1f} ms | {rt['encode_ms_p50']:.1f} ms | "
        f"{rt['classify_ms_p50']:.2f} ms | {rt['batch_qps']:.0f} queries/s (batch {rt['batch_size']}) | "
        f"{rt['encoder']} |",
        "",
        _router_prototype(rt),
        "",
        "Single-query p50 by torch thread count: "
        + ", ".join(f"{c} thread(s) {ms:.1f} ms" for c, ms in rt.get("single_ms_p50_by_threads", {}).items())
        + ".",
        "",
    ]
    out += ["## Adapters: memory and switching", ""]
    if "skipped" in a:
        out += [f"skipped: {a['skipped']}", ""]
    else:
        out += [
            "| configuration | RSS (MiB) |",
            "| --- | ---: |",
            *(
                f"| NF4 base + {c['adapters']} adapter(s), serving state | {c['delta_mib']:,.0f} |"
                for c in a["configurations"]
            ),
            f"| base + 10 adapters ({a['ten_adapters_method']}) | {a['ten_adapters_mib']:,.0f} |",
            f"| 10 merged bf16 models ({a['ten_merged_method']}) | {a['ten_merged_mib']:,.0f} |",
            f"| 10 merged models re-quantized to NF4 (10 x the NF4 base) | {a['ten_merged_nf4_mib']:,.0f} |",
            "",
            f"Each configuration is loaded in a fresh subprocess the way the engine does it (attach every adapter, "
            f"then the first forward) and measured relative to the process after importing torch/transformers "
            f"({a['rss_after_imports_mib']:,.0f} MiB). One adapter costs {a['per_adapter_mib']:.1f} MiB of RSS "
            f"({a['adapter_file_mib']:.1f} MiB file; {', '.join(a['adapter_sources'])}). "
            f"set_adapter switch: p50 {a['switch_ms_p50']:.2f} ms, "
            f"p95 {a['switch_ms_p95']:.2f} ms over {a['switches']} switches ({a['lora_modules']} LoRA modules). ",
            "",
        ]
    share = a.get("route_share_of_answer")
    out += [
        f"Routing overhead: {_n(None if share is None else share * 100, 2, ' %')} of a whole answer "
        f"({a.get('route_share_basis', '')}).",
        "",
    ]
    out += ["## Training cost (QLoRA)", ""]
    if "skipped" in t:
        out += [f"skipped: {t['skipped']}", ""]
    else:
        out += [
            "| seconds per step | tokens/s | peak RSS | batch x tokens | trainable params |",
            "| ---: | ---: | ---: | --- | ---: |",
            f"| {t['s_per_step']:.2f} s | {t['tokens_per_s']:.0f} | {t['peak_rss_mib']:,.0f} MiB | "
            f"{t['batch']} x {t['seq_len']} | {t['trainable_params']:,} |",
            "",
            f"Recipe: {t['recipe']}; median of {t['steps_timed']} steps after one warm-up step, in a fresh "
            "process on a freshly loaded base (never one that served inference).",
            "",
        ]
    if "serve" in r:
        from measurement.bench.serve_bench import markdown_rows

        out += markdown_rows(r["serve"])
    if "vllm" in r:
        out += vllm_rows(r["vllm"])
    if g.get("profile"):
        out += ["## Where decode time goes", "", *_profile_rows(g["profile"]), ""]
    return "\n".join(out)


def snippet(r: dict[str, Any]) -> str:
    """The short table the README quotes (docs/benchmarks/README-snippet.md)."""
    g, rt, a, t = r["generation"], r["router"], r["adapters"], r["training"]
    v = g["variants"]
    ratios = g["ratios"]
    peer = v.get("llama_cpp", {})
    rows = [
        f"Measured {r['date'][:10]} on {r['machine']['cpu']} ({r['machine']['cores_logical']} threads, "
        f"avx512_bf16 {'yes' if r['machine']['avx512_bf16'] else 'no'}); medians of {g['repeats']} interleaved "
        f"rounds, {g['prompt_tokens']}-token prompt, {g['new_tokens']} new tokens, {g['threads']} threads. "
        "Full report and charts: [docs/benchmarks/latest.md](docs/benchmarks/latest.md).",
        "",
        "| what | measured | ratio |",
        "| --- | ---: | ---: |",
        *(snippet_rows(r["product"]) if "product" in r else []),
        f"| decode, ours NF4 | {v['nf4']['decode_tok_s']:.1f} tok/s | "
        f"{_x(ratios['nf4_vs_llama_cpp_decode'])} of llama.cpp |",
    ]
    if "decode_tok_s" in peer:
        rows.append(f"| decode, llama.cpp on the same GGUF | {peer['decode_tok_s']:.1f} tok/s | 1.00x |")
    rows += [
        f"| decode, ours bf16 | {v['bf16']['decode_tok_s']:.1f} tok/s | NF4 is "
        f"{_x(ratios['nf4_vs_bf16_decode'])} bf16 |",
        f"| decode, ours NF4 + LoRA | {v['nf4_lora']['decode_tok_s']:.1f} tok/s | "
        f"{_x(ratios['nf4_lora_vs_nf4_decode'])} of NF4 |",
        f"| time to first token, NF4 / llama.cpp | {v['nf4']['ttft_s']:.2f} s / {peer.get('ttft_s', 0):.2f} s | |",
        f"| router, one query p50 / p95 | {rt['single_ms_p50']:.1f} / {rt['single_ms_p95']:.1f} ms | "
        f"target {rt['target_ms']:.0f} ms |",
    ]
    for key in ("int4_torch",):
        if key in v and "decode_tok_s" in v[key]:
            rows.append(
                f"| decode, {v[key]['label']} | {v[key]['decode_tok_s']:.1f} tok/s | "
                f"{_x(ratios.get(f'{key}_vs_llama_cpp_decode'))} of llama.cpp |"
            )
    proto = rt.get("prototype")
    if proto and proto.get("changes", "").count(";"):
        rows.append(f"| router p50, prototype ({proto['changes']}) | {proto['single_ms_p50']:.1f} ms | |")
    if "skipped" not in a:
        rows += [
            f"| memory, base + 10 adapters | {a['ten_adapters_mib']:,.0f} MiB | |",
            f"| memory, 10 merged bf16 models (est.) | {a['ten_merged_mib']:,.0f} MiB | "
            f"{_x(a['ten_merged_vs_ten_adapters'], 1)} the adapters |",
            f"| adapter switch (set_adapter) p50 | {a['switch_ms_p50']:.1f} ms | |",
        ]
    busiest = max(r.get("serve", {}).get("levels", []), key=lambda level: level["clients"], default=None)
    if busiest:
        rows.append(
            f"| serve, {busiest['clients']} concurrent clients: latency p50 / p95 | "
            f"{busiest['latency_ms_p50'] / 1000:.1f} / {busiest['latency_ms_p95'] / 1000:.1f} s | |"
        )
    if "vllm" in r:
        rows += vllm_snippet_rows(r["vllm"])
    if "skipped" not in t:
        rows.append(
            f"| QLoRA training, {t['batch']} x {t['seq_len']} tokens | {t['s_per_step']:.1f} s/step, "
            f"peak {t['peak_rss_mib'] / 1024:.1f} GiB | |"
        )
    if r["notes"]:
        rows += ["", *(f"Note: {n}" for n in r["notes"])]
    return "\n".join(rows) + "\n"


def write_outputs(r: dict[str, Any], out_dir: Path) -> list[Path]:
    """latest.json, latest.md, README-snippet.md and the charts into `out_dir`; returns the paths written."""
    from measurement.bench.charts import write_charts

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("latest.json", json.dumps(r, indent=2, ensure_ascii=False) + "\n"),
        ("latest.md", markdown(r) + "\n"),
        ("README-snippet.md", snippet(r)),
    ):
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    written += write_charts(r, out_dir)
    return written
