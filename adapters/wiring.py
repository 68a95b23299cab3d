"""The one place that builds the product's parts from settings: encoder, router, engine, system prompt, session.

main.py, training, the eval commands and the bench all build through here, so each part is wired
once and a test replaces it in one place (for example `adapters.wiring.build_encoder`). Heavy
imports stay inside the functions: importing this module loads no model and no torch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant.config import BUNDLED, Settings
from assistant.encoders import Encoder, SentenceTransformerEncoder
from assistant.engine import AdapterInfo, Engine, GenerationParams
from assistant.errors import ModelUnavailable, UsageError

if TYPE_CHECKING:
    from adapters.base_model import LoadedBase
    from adapters.hf_engine import TransformersEngine
    from adapters.openai_engine import OpenAIEngine
    from assistant.answer_policy import AnswerPolicy
    from assistant.router import Router
    from assistant.session import ChatSession


def log(message: str) -> None:
    """Progress and diagnostics go to stderr; stdout is for answers."""
    print(message, end="" if message.endswith(("\r", "\n")) else "\n", file=sys.stderr, flush=True)


def installed_adapters(settings: Settings, warn: Callable[[str], None] = log) -> list[AdapterInfo]:
    """Adapters in the settings' stores (manifests only; no torch); each skipped folder is warned about."""
    from adapters.registry import scan_adapters

    found, problems = scan_adapters(settings.adapter_dirs)
    for problem in problems:
        warn(f"warning: {problem}")
    return found


def build_encoder(settings: Settings) -> Encoder:
    """The router's sentence encoder: the bundled multilingual-e5-small tuned for routing, or the model named.

    The bundled one runs on FastE5Encoder with one thread (the same vectors as sentence-transformers
    at a third of the latency, and stable while the second core generates) with its top layers
    tuned on the routing data (adapters/routing_encoder.py: tuned once per data change, cached).
    Its `untuned` twin, sharing the weights, is what similarity search uses.
    """
    if settings.encoder != BUNDLED:
        return SentenceTransformerEncoder(settings.encoder)
    from adapters.bundled_encoder import prepare_bundled_encoder
    from adapters.fast_encoder import FastE5Encoder
    from adapters.routing_encoder import load_or_tune
    from data.labels import load_labelled

    path = prepare_bundled_encoder()
    # The name keys the router cache: it names the model, not the code path computing it.
    base = FastE5Encoder(path, name=f"bundled:{path.name}", threads=1)
    return load_or_tune(base, load_labelled(routing_files(settings)), progress=log)


def search_encoder(encoder: Encoder) -> Encoder:
    """The encoder for similarity search (knowledge passages): the published model behind a routing-tuned one.

    Tuning for routing pulls each route's texts together, which blurs which texts mean the same.
    A wrapper holding the encoder as `inner` (serve's one-call-at-a-time SerialEncoder) is looked
    through; FastE5Encoder calls already take turns among themselves.
    """
    inner = getattr(encoder, "inner", encoder)
    untuned = getattr(inner, "untuned", inner)
    return encoder if untuned is inner else untuned


def routing_files(settings: Settings, adapters: list[AdapterInfo] | None = None, skip: str | None = None) -> list[Path]:
    """The labelled data the router is fitted on: settings.routing_data plus each adapter's route examples.

    `skip` leaves one adapter's examples out (training compares the router with and without it).
    """
    from adapters.registry import route_example_files, scan_adapters

    found = adapters if adapters is not None else scan_adapters(settings.adapter_dirs)[0]
    return list(settings.routing_data) + route_example_files(a for a in found if a.name != skip)


def build_router(
    settings: Settings,
    adapters: list[AdapterInfo] | None = None,
    progress: Callable[[str], None] = log,
    encoder: Encoder | None = None,
) -> Router:
    """Encoder + the fitted route classifier + the about-the-assistant detector (refitted when the data changes)."""
    from assistant.about_assistant import load_or_fit_detector
    from assistant.router import GENERAL, Router
    from assistant.router_fit import load_or_fit_router
    from data.labels import load_labelled

    adapters = installed_adapters(settings, progress) if adapters is None else adapters
    encoder = encoder or build_encoder(settings)
    examples = load_labelled(routing_files(settings, adapters))
    fitted = load_or_fit_router(encoder, examples, progress, head=settings.router_head)
    about = load_or_fit_detector(encoder, examples, log=progress)
    routes: dict[str, str | None] = {GENERAL: None}
    routes.update({a.route: a.name for a in adapters})
    return Router(encoder, fitted.stored, routes, about=about, search_encoder=search_encoder(encoder))


@dataclass
class BuiltEngine:
    """The engine and what went into it (the bench needs the raw model and the load time)."""

    loaded: LoadedBase
    engine: TransformersEngine
    load_seconds: float
    tuning: dict[str, Any]


def build_engine_parts(
    settings: Settings,
    progress: Callable[[str], None] = log,
    prepare: Callable[[Any], dict[str, Any]] | None = None,
    show_progress: bool = True,
) -> BuiltEngine:
    """Load the base (4-bit by default), tune it for serving, attach every installed adapter.

    `prepare` replaces the serving tuning (the bench's speed prototypes rewrite the model here).
    """
    from adapters.base_model import load_base
    from adapters.hf_engine import TransformersEngine
    from adapters.inference_tuning import tune_for_inference

    if settings.engine != "local":
        # Raw forward passes (validation loss, speed prototypes) need the model in this process.
        raise UsageError(
            f"this command measures the local model; engine {settings.engine!r} does not apply here",
            'run it without --engine vllm (and without engine = "vllm" in the settings file)',
        )
    started = time.perf_counter()
    loaded = load_base(settings, progress=show_progress)
    tuning = prepare(loaded.model) if prepare else tune_for_inference(loaded.model, loaded.info, settings)
    engine = TransformersEngine(
        loaded.model,
        loaded.tokenizer,
        loaded.info,
        loaded.checksum,
        settings.adapter_dirs,
        warn=lambda m: progress(f"warning: {m}"),
        context_length=settings.max_context,
        kv_cache_mb=settings.kv_cache_mb,
    )
    return BuiltEngine(loaded, engine, time.perf_counter() - started, tuning)


def build_engine(settings: Settings, progress: Callable[[str], None] = log) -> Engine:
    """The engine the settings choose: the local base with every installed adapter attached, or a vLLM server."""
    if settings.engine == "vllm":
        return build_server_engine(settings, progress)
    return build_engine_parts(settings, progress).engine


def build_server_engine(settings: Settings, progress: Callable[[str], None] = log) -> OpenAIEngine:
    """An engine over the vLLM server at engine_url, or the one `vllm start` left running; the router stays here."""
    from adapters.openai_engine import OpenAIEngine
    from adapters.vllm_server import engine_api_key, recorded_url

    url = settings.engine_url or recorded_url()
    if url is None:
        raise ModelUnavailable(
            "engine 'vllm' is chosen, but no vLLM server is running and engine_url is not set",
            "start one with `python main.py vllm start`, or give --engine-url",
        )
    progress(f"using the vLLM server at {url}")
    return OpenAIEngine(
        url,
        settings.adapter_dirs,
        api_key=engine_api_key(settings),
        repetition_penalty=settings.repetition_penalty,
        warn=lambda m: progress(f"warning: {m}"),
    )


def system_prompt(settings: Settings) -> str:
    """The system turn of every answer: the settings' override, or the identity prompt."""
    from data.identity import load_identity

    return settings.system_prompt or load_identity().system_prompt()


def answer_prefix() -> Callable[[str], str]:
    """question -> the in-character first words of an answer about the assistant."""
    from data.identity import load_identity

    return load_identity().answer_prefix


def build_policy(settings: Settings, router: Router, adapters: list[AdapterInfo] | None = None) -> AnswerPolicy:
    """The safety rules and answer guard for every route, with knowledge retrieval on each route that has entries.

    A route's entries are data/knowledge/ROUTE/*.md plus its adapter folder's own knowledge/; they are
    embedded with the router's search encoder, which is already loaded. The emergency-sign detector
    and the live-data detector read the same encoder's vector of the question, so it is encoded once for all.
    """
    from assistant.answer_policy import AnswerPolicy
    from assistant.emergency_signs import RepeatingEncoder, load_or_fit_emergency_signs
    from assistant.knowledge import KnowledgeIndex
    from assistant.live_data_signs import load_or_fit_live_data_signs
    from data.drug_names import load_drug_names
    from data.knowledge import knowledge_folders, load_knowledge
    from data.labels import load_labelled

    adapters = installed_adapters(settings) if adapters is None else adapters
    encoder = RepeatingEncoder(router.search_encoder)
    indexes: dict[str, KnowledgeIndex] = {}
    for adapter in adapters:
        entries = load_knowledge(knowledge_folders(adapter.route, adapter.path))
        if entries:
            indexes[adapter.route] = KnowledgeIndex(
                encoder, entries, settings.knowledge_min_score, settings.knowledge_passages
            )
    routing = load_labelled(routing_files(settings, adapters))
    emergency = load_or_fit_emergency_signs(encoder, log=log, routing=routing)
    live = load_or_fit_live_data_signs(encoder, log=log, routing=routing)
    return AnswerPolicy(load_drug_names(), indexes, emergency, live)


def generation_params(settings: Settings) -> GenerationParams:
    """How answers are sampled, from the settings."""
    return GenerationParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature)


def build_session(
    settings: Settings,
    keep_history: bool,
    sticky: bool,
    progress: Callable[[str], None] = log,
    router: Any = None,
    engine: Any = None,
) -> ChatSession:
    """Everything a shell needs, wired together; a router or engine given is used as it is."""
    from assistant.session import ChatSession

    adapters = installed_adapters(settings, progress)
    if router is None:
        progress("loading the router…")
        router = build_router(settings, adapters, progress=progress)
    if engine is None:
        progress("loading the base model and adapters…")
        engine = build_engine(settings, progress)
    return ChatSession(
        router,
        engine,
        generation_params(settings),
        system_prompt(settings),
        keep_history=keep_history,
        sticky=sticky,
        answer_prefix=answer_prefix(),
        policy=build_policy(settings, router, adapters) if settings.safety_rules else None,
    )
