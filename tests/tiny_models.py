"""Tiny deterministic Qwen2 models, tokenizers and LoRA adapters for fast tests (no hub, no real weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adapters.base_source import folder_checksum
from adapters.registry import write_manifest

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

#: Qwen2.5's own chat template without its tool-calling branches: identical output for plain
#: system/user/assistant conversations, including the default system turn.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Common Chinese characters (incl. the identity/caregiving vocabulary) that get their own token,
# so Chinese prompts are a few tokens per character as with the real model, not three bytes each.
COMMON_CJK = (
    "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
    "用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实"
    "谁助手吗呢什帮问题爸妈奶爷吃药睡觉医院身体健康饭水请谢名字叫老照护病痛慢怎办今明早晚己"
    "，。？！：；、"
)
VOCAB_MULTIPLE = 32  # bnb's CPU kernel asserts output sizes divisible by 32 (docs/MODELS.md)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pre-tokenization emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE (lossless for any text, emoji included) with merges for COMMON_CJK and ChatML specials."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for ch in dict.fromkeys(COMMON_CJK):  # ordered, de-duplicated
        symbols = [b2u[b] for b in ch.encode("utf-8")]
        token = symbols[0]
        for nxt in symbols[1:]:
            if token + nxt not in vocab:
                vocab[token + nxt] = len(vocab)
                merges.append((token, nxt))
            token += nxt
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT, IM_START, IM_END)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


def build_tiny_qwen2(dir: Path, seed: int = 0, tie_word_embeddings: bool = True) -> Path:
    """Save a tiny random Qwen2ForCausalLM (fp32 safetensors) + tokenizer + chat template into `dir`.

    2 layers, hidden 64, intermediate 128, 4 heads / 2 kv heads (k/v outputs 32): every linear
    output size is a multiple of 32 so bitsandbytes' CPU 4-bit kernel accepts it. Deterministic
    for a given seed; the global RNG state is left untouched.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    dir = Path(dir)
    tokenizer = build_tiny_tokenizer()
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_END, ENDOFTEXT)}
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).eval()  # fp32: torch's default dtype
    model.generation_config = GenerationConfig(
        bos_token_id=ids[ENDOFTEXT], eos_token_id=[ids[IM_END], ids[ENDOFTEXT]], pad_token_id=ids[ENDOFTEXT]
    )
    dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dir)
    tokenizer.save_pretrained(dir)
    return dir


def tiny_base_checksum(dir: Path) -> str:
    """The base checksum load_base reports for this folder (what adapter manifests must carry)."""
    return folder_checksum(Path(dir))


def build_tiny_lora(
    base_dir: Path,
    out_dir: Path,
    name: str,
    route: str,
    seed: int = 0,
    r: int = 8,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Save a random PEFT LoRA (all linear layers, non-zero B so outputs differ) + manifest.json into `out_dir`.

    `name` must equal the folder name (the registry requires it).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules="all-linear",
        init_lora_weights=False,  # peft's default zero B would make the adapter a no-op
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out_dir))
    write_manifest(
        out_dir,
        name=name,
        route=route,
        base_model=str(base_dir.resolve()),
        base_checksum=tiny_base_checksum(base_dir),
        metrics=dict(metrics or {}),
    )
    return out_dir


def build_tiny_engine_files(root: Path, adapters: tuple[str, ...] = ("alpha", "beta")) -> dict[str, Path]:
    """A tiny base in `root`/base and random LoRAs on it in `root`/adapters (adapter i routes to route-a, -b, ...)."""
    base = build_tiny_qwen2(root / "base")
    store = root / "adapters"
    store.mkdir()
    for index, name in enumerate(adapters, start=1):
        build_tiny_lora(base, store / name, name, f"route-{chr(ord('a') + index - 1)}", index)
    return {"root": root, "base": base, "adapters": store}


def build_tiny_gguf(path: Path, seed: int = 0, output_noise: float | None = 0.02) -> Path:
    """Write the tiny Qwen2 of `build_tiny_qwen2` as a qwen2 GGUF file (F32 tensors, GPT-2 style tokenizer).

    Like llama.cpp's files it stores a separate `output.weight`: the token embeddings plus relative
    noise `output_noise` (a stand-in for two quantizations of one matrix), or an unrelated random
    matrix when `output_noise` is None.
    """
    import json
    import tempfile

    import gguf
    from safetensors.torch import load_file

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_qwen2(Path(tmp), seed=seed)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        state = load_file(str(folder / "model.safetensors"))
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    embed = state["model.embed_tokens.weight"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        noise = torch.randn_like(embed)
    if output_noise is None:
        output = noise * embed.std()
    else:
        output = embed + noise * embed.std() * output_noise

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    specials = {t["content"]: t["id"] for t in spec["added_tokens"]}
    by_id = {i: t for t, i in {**vocab, **specials}.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(config["vocab_size"])]
    types = [
        gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED
        for i, t in enumerate(tokens)
    ]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(specials[ENDOFTEXT])
    writer.add_eos_token_id(specials[IM_END])
    writer.add_pad_token_id(specials[ENDOFTEXT])
    writer.add_add_bos_token(False)
    writer.add_chat_template(template)

    tensors = {names[k]: v for k, v in state.items() if k in names}
    tensors["output.weight"] = output
    for key, value in state.items():
        parts = key.split(".")  # model.layers.N.<module>.<sub>.weight|bias
        if parts[:2] == ["model", "layers"]:
            module = ".".join(parts[3:-1])
            tensors[f"blk.{parts[2]}.{per_layer[module]}.{parts[-1]}"] = value
    for name, value in tensors.items():
        writer.add_tensor(name, value.to(torch.float32).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
