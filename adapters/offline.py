"""Keep the model libraries offline and quiet; call `force_offline()` before importing them."""

from __future__ import annotations

import logging
import os
import warnings

# Read by huggingface_hub/transformers/datasets when they are first imported, so they must be
# set before that: no machine this product runs on may reach a model hub, and a hub lookup
# would otherwise hang on a network timeout before failing.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

# Read by torch's OpenMP runtime (libgomp) when torch is imported. With the default ACTIVE policy
# idle worker threads spin; when the cores are shared with any other busy process, each of the
# hundreds of small parallel regions per decoded token can wait on a descheduled thread. Measured on
# this project's 2-core machine under load (loadavg ~9): NF4 decode 0.8-1.8 tok/s and a 10-22 s
# warm-up with ACTIVE, 10-11.7 tok/s and 1.9 s with PASSIVE. Users can still set ACTIVE.
# numpy's BLAS would spread the router's tiny 1x384 products over both cores and lose ~12 ms
# to thread hand-off on a busy machine; one thread does them in well under a millisecond.
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}

# Loggers that talk on import about things a user cannot act on.
_QUIET_LOGGERS = (
    # "Failed to load CPU gemm_4bit_forward from kernels-community": the optional `kernels`
    # package would fetch its kernel from the hub, which cannot work offline; bnb's bundled
    # CPU kernel is used instead.
    "bitsandbytes.backends.cpu.ops",
)


def force_offline() -> None:
    """Set the hub-offline and OpenMP variables (unless the user set them) and silence import-time noise.

    Idempotent and cheap; call it at process start, before torch/transformers/bitsandbytes load
    (the variables are read when those libraries are first imported).
    """
    for name, value in {**OFFLINE_ENV, **THREAD_ENV}.items():
        os.environ.setdefault(name, value)
    for name in _QUIET_LOGGERS:
        # getLogger before the module exists returns the same object the module later uses.
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation chatter from third-party internals (not our code) on import.
    for module in ("bitsandbytes", "peft", "accelerate", "transformers"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
