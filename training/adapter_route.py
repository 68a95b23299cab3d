"""Teaching the router a new adapter's route: the accuracy guard before training and the refit after it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters import wiring
from assistant.config import Settings
from assistant.errors import UsageError
from data.labels import load_labelled
from training import router_refit
from training.job_inputs import AdapterJob, JobInputs


@dataclass(frozen=True)
class RouteGuard:
    """The guard's result: its accuracy check (for the manifest) and the encoder the refit reuses."""

    encoder: router_refit.MemoEncoder  # remembers the vectors, so the refit re-encodes nothing
    check: router_refit.RouterCheck


def guard_route(
    job: AdapterJob,
    settings: Settings,
    inputs: JobInputs,
    log: Callable[[str], None],
    encoder_factory: Callable[[Settings], Any] | None = None,
) -> RouteGuard | None:
    """Refuse a route that costs the existing routing more than MAX_DROP (unless --force); None without --route."""
    if job.route is None:
        return None
    route = inputs.route
    encoder = router_refit.MemoEncoder((encoder_factory or wiring.build_encoder)(settings))
    existing = load_labelled(wiring.routing_files(settings, skip=job.name))
    check = router_refit.check_route(encoder, existing, route, inputs.route_texts, log)
    log(check.format())
    if check.drop > router_refit.MAX_DROP:
        if not job.force:
            raise UsageError(
                f"adding route {route!r} drops routing accuracy on the existing labelled data by "
                f"{check.drop * 100:.1f} points (more than {router_refit.MAX_DROP * 100:.0f}); nothing was trained",
                "give fewer, more typical examples with --route-examples FILE, or pass --force",
            )
        log(f"warning: accuracy drops by {check.drop * 100:.1f} points; continuing because of --force")
    return RouteGuard(encoder, check)


def refit_router(guard: RouteGuard, settings: Settings, route: str, log: Callable[[str], None]) -> None:
    """Refit on the files the app loads (now with the installed adapter's examples) and cache it for the app."""
    result, folder = router_refit.refit_and_store(
        guard.encoder, wiring.routing_files(settings), log, settings.router_head
    )
    log(
        f"router refitted with route {route!r}: cross-validated accuracy {result.cv_report.accuracy:.1%} "
        f"on {len(result.stored.example_labels)} examples; stored in {folder}"
    )
