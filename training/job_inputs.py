"""A `train adapter` job and its inputs, checked before any model loads: names, data, route ownership."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.registry import NAME_PATTERN, install_target, scan_adapters
from assistant.config import Settings
from assistant.errors import UsageError
from data.knowledge import KnowledgeEntry, load_knowledge
from data.sft import SFTSample, load_sft_file
from training import router_refit
from training.config import TrainConfig
from training.grounding import ground_samples
from training.identity_data import identity_samples

RESERVED_ROUTES = ("general", "base", "auto")


@dataclass(frozen=True)
class AdapterJob:
    """One `train adapter` run."""

    name: str
    data_file: Path
    config: TrainConfig
    route: str | None = None  # None: route = name, and the router is not taught about it
    route_examples: Path | None = None
    route_texts: tuple[str, ...] | None = None  # pre-read examples (train identity keeps the old ones)
    knowledge: Path | None = None  # knowledge entries grounded data lines are answered from
    force: bool = False
    resume: bool = False
    config_file: str = ""
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # added to the manifest as is


@dataclass(frozen=True)
class JobInputs:
    """What preflight read and checked: the samples to train on and the route with its example texts."""

    domain: list[SFTSample]  # the job's data file
    identity: list[SFTSample]  # identity pairs mixed in (empty when the recipe turns identity off)
    route: str
    route_texts: list[str]  # taught to the router; empty when the job does not touch routing
    knowledge: list[KnowledgeEntry] = field(default_factory=list)  # entries shipped in the adapter's knowledge/


def check_name(value: str, what: str) -> str:
    """`value` if it is a plain name (letters, digits, '-', '_'), else a UsageError naming `what`."""
    if not NAME_PATTERN.fullmatch(value):
        raise UsageError(f"bad {what} {value!r}", "use letters, digits, '-' and '_' (start with a letter or digit)")
    return value


def preflight(job: AdapterJob, settings: Settings) -> JobInputs:
    """Everything that can fail cheaply, before a model is loaded: names, data, route ownership, examples."""
    install_target(settings.adapters_dir, job.name)  # a name or store that could touch code stops here
    route = check_name(job.route or job.name, "route")
    if route in RESERVED_ROUTES:
        raise UsageError(f"route {route!r} is reserved", "the general route is the plain base; pick another name")
    domain = load_sft_file(job.data_file)  # BadInputFile names file and line; nothing is trained
    for adapter in scan_adapters(settings.adapter_dirs)[0]:
        if adapter.route == route and adapter.name != job.name:
            raise UsageError(
                f"route {route!r} is already served by adapter {adapter.name!r}",
                f"retrain that adapter (--name {adapter.name}) or choose another --route",
            )
    identity = identity_samples(job.config.identity_samples, job.config.seed) if job.config.identity else []
    route_texts = _route_texts(job, route, domain)  # the questions themselves, before any passages are added
    entries: list[KnowledgeEntry] = []
    if job.knowledge is not None:
        entries = load_knowledge([job.knowledge])
        if not entries:
            raise UsageError(f"no knowledge entries in {job.knowledge}", "see data/knowledge/README.md for the format")
        domain = ground_samples(domain, entries, settings.knowledge_passages, job.config.seed)
    elif any(s.grounded for s in domain):
        raise UsageError(
            f"{job.data_file} has grounded lines (question, answer, entries)",
            "pass --knowledge DIR with the entries they name",
        )
    return JobInputs(domain, identity, route, route_texts, entries)


def _route_texts(job: AdapterJob, route: str, domain: list[SFTSample]) -> list[str]:
    """The texts that teach the router the route: given, read from --route-examples, or the data's prompts."""
    if job.route is None:
        return []
    if job.route_texts is not None:
        return list(job.route_texts)
    if job.route_examples is not None:
        return router_refit.read_route_examples(job.route_examples, route)
    return list(dict.fromkeys(s.prompt for s in domain))
