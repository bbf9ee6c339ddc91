"""One structured log line per call, on the ``heml.requests`` logger (INFO).

The line is a JSON object with exactly these fields::

    {"event": "rpc", "request_id": "…", "method": "Predict", "key_id": "alice",
     "model": "cancer", "version": 1, "layout": "row", "n": 1, "ciphertexts": 1,
     "computed": 68, "blocks": 1, "latency_ms": 4.2, "status": "OK",
     "worker": 1234, "peer": "ipv4:127.0.0.1:50312"}

It never holds feature values, ciphertexts, replies, HE keys, API keys or their hashes, nor
status messages (which may quote client-chosen strings): only sizes, names the server knows
(models it serves, key ids from the key file) and a request id reduced to a safe alphabet.
``model`` stays empty when the call named no model the server serves.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field

log = logging.getLogger("heml.requests")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/+\[\]-]")


def safe_token(value, limit: int = 64) -> str:
    """Client-chosen strings reduced to a short, log- and label-safe form."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return _UNSAFE.sub("_", text[:limit])


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class CallRecord:
    """What one call did (filled in by the interceptor and the servicer's ``admit``)."""

    method: str
    request_id: str = field(default_factory=new_request_id)
    key_id: str = ""
    model: str = ""
    version: int = 0
    layout: str = ""
    n: int = 0
    ciphertexts: int = 0
    computed: int = 0
    blocks: int = 0
    peer: str = ""

    def line(self, status: str, seconds: float) -> str:
        return json.dumps(
            {
                "event": "rpc",
                "request_id": self.request_id,
                "method": self.method,
                "key_id": self.key_id,
                "model": self.model,
                "version": self.version,
                "layout": self.layout,
                "n": self.n,
                "ciphertexts": self.ciphertexts,
                "computed": self.computed,
                "blocks": self.blocks,
                "latency_ms": round(seconds * 1000, 3),
                "status": status,
                "worker": os.getpid(),
                "peer": self.peer,
            },
            separators=(",", ":"),
            ensure_ascii=True,
        )

    def emit(self, status: str, seconds: float) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("%s", self.line(status, seconds))
