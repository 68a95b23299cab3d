"""Which sentence encoder the router uses: the bundled E5 on its fast path, or any sentence-transformers model."""

from __future__ import annotations

from assistant.config import BUNDLED, Settings
from assistant.encoders import Encoder, SentenceTransformerEncoder


def build_encoder(settings: Settings) -> Encoder:
    """The bundled multilingual-e5-small (prepared once) or the sentence-transformers model the user names.

    The bundled one runs on FastE5Encoder with one thread: the same vectors as
    sentence-transformers (cosine >= 0.99999) at a third of the latency, and stable when the
    second core is busy generating.
    """
    if settings.encoder != BUNDLED:
        return SentenceTransformerEncoder(settings.encoder)
    from adapters.bundled_encoder import prepare_bundled_encoder
    from adapters.fast_encoder import FastE5Encoder

    path = prepare_bundled_encoder()
    # The name keys the router cache: it names the model, not the code path computing it.
    return FastE5Encoder(path, name=f"bundled:{path.name}", threads=1)
