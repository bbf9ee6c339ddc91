"""The heml SDK: score encrypted features on a heml server.

    with heml.Client("localhost:50051") as client:
        model = client.model("cancer")
        model.predict_proba(X)

Keys are generated in this process and never leave it; only ciphertexts go out. Every call
has a deadline; idempotent calls (all of heml's) are retried on UNAVAILABLE with backoff.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from . import _targets
from ._memory import keep_freed_memory
from ._version import PROTOCOL_VERSION
from .errors import (
    DeadlineExceeded,
    InsecureTransport,
    InvalidCiphertext,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RemoteError,
    ReplyRejected,
    ResourceExhausted,
    ServerUnavailable,
    Unauthenticated,
    VersionMismatch,
)
from .he.codec import ClientCodec
from .he.keys import KeySet
from .he.private import PRIVATE
from .he.scoring import Block
from .info import LAYOUT_TO_PB, ModelInfo, ServerInfo, model_info_from_pb
from .links import finish_decision_function, finish_predict, finish_predict_proba
from .v1 import heml_pb2 as pb
from .v1 import heml_pb2_grpc

MiB = 1 << 20
DEFAULT_TIMEOUT = 60.0
DEFAULT_PORT = 50051  # `heml serve`'s default port
MAX_MESSAGE_BYTES = 4 * MiB  # what this client sends per message
MAX_RECEIVE_BYTES = 64 * MiB
BLOCKS_PER_STREAM = 32
STREAM_WINDOW = 2  # blocks encrypted ahead of the replies (overlaps client and server work)

_ERRORS = {
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailable,
}


def _host_is_loopback(address: str) -> bool:
    if address.startswith("["):  # [v6]:port
        host = address[1 : address.find("]")] if "]" in address else address
    elif address.count(":") == 1:  # host:port
        host = address.split(":", 1)[0]
    else:  # a bare host or IPv6 address
        host = address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_loopback(target: str) -> bool:
    """Whether every address of a gRPC target is on this machine (127/8, ::1, localhost, a
    unix socket): the only targets the SDK talks to without TLS unless told otherwise."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    rest = target
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
            if rest.startswith("//"):  # dns://authority/host:port
                authority, _, rest = rest[2:].partition("/")
                if authority:  # a resolver of the caller's choice answers for the host
                    return False
            break
    addresses = [a.strip() for a in rest.split(",")]
    return all(a and _host_is_loopback(a) for a in addresses)


def with_default_port(target: str) -> str:
    """``host`` -> ``host:50051`` (the port `heml serve` uses by default). gRPC itself would
    pick 443, which no heml server listens on unless told to. Targets with a scheme
    (``dns:///``, ``unix:``, ``ipv4:``…) and ``host:port`` forms are kept as they are."""
    if "://" in target or target.startswith(("unix:", "ipv4:", "ipv6:", "dns:")):
        return target
    if "," in target:  # a list of replicas: each entry on its own
        return ",".join(with_default_port(t.strip()) for t in target.split(","))
    if target.startswith("["):  # [v6] or [v6]:port
        return target if "]:" in target else f"{target}:{DEFAULT_PORT}"
    if target.count(":") == 1 or not target:
        return target
    if target.count(":") > 1:  # a bare IPv6 address
        return f"[{target}]:{DEFAULT_PORT}"
    return f"{target}:{DEFAULT_PORT}"


def _explain(code: grpc.StatusCode, details: str, target: str) -> str:
    """A failed connection in the user's terms, with what to check."""
    text = details or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        if "HTTP/2" in text or "http2" in text.lower() or "Socket closed" in text:
            return (
                f"the server at {target} does not speak gRPC: is this the port of `heml serve`? "
                "(a TLS server reached without --ca / root_certificates looks like this too)"
            )
        if "onnect" in text or "failed to connect" in text or "DNS" in text:
            return f"cannot reach {target}: is `heml serve` running there?"
    return ""


def translate(exc: grpc.RpcError, target: str) -> RemoteError:
    """gRPC errors -> heml errors (the only place the SDK looks at gRPC status codes)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    kind = _ERRORS.get(code, RemoteError)
    hint = _explain(code, details, target)
    message = f"{hint} ({code.name}: {details})" if hint else f"{target}: {details} ({code.name})"
    err = kind(message, code=code.name, details=details or "")
    if isinstance(err, ResourceExhausted):
        meta = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
        if "retry-after" in meta:
            with contextlib.suppress(ValueError):
                err.retry_after = float(meta["retry-after"])
    return err


@dataclass
class CallStats:
    """What the last predict* call cost: bytes on the wire, blocks and wall time."""

    samples: int = 0
    blocks: int = 0
    ciphertexts_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    server_seconds: float = 0.0  # server-reported time on the blocks (wall)
    server_cpu_seconds: float = 0.0  # server-reported CPU time on the blocks
    layouts: dict = field(default_factory=dict)


class Client:
    """A connection to a heml server.

    Parameters
    ----------
    target : str
        ``host:port`` of the server (or of a balancer in front of replicas); or several
        replicas, ``host:port,host:port``, or ``dns:///name:port`` (every address of the
        name): calls are then spread over them (round robin) and a retried call goes to
        another replica. Host names in a list are resolved once, when the Client is made.
    keys : str, path or KeySet, optional
        The master seed each model's secret key is derived from, one key per (target as
        written, model name). A path is loaded if it exists (refused if group or others can
        write it, a warning if they can read it), else created with mode 0600. Default: a
        fresh seed kept in memory only.
    api_key : str, optional
        Sent as ``authorization: Bearer <api_key>`` on every call.
    timeout : float, default=60
        Deadline in seconds for each call (large batches: per stream of blocks).
    root_certificates, client_cert, client_key : bytes, optional
        TLS (server CA) and mTLS (client certificate and key), PEM.
    retries : int, default=4
        Extra attempts for calls that fail with UNAVAILABLE (with exponential backoff).
    insecure : bool, default=False
        Allow a plaintext connection to a target that is not on this machine. Without TLS a
        non-loopback target is refused: the server could be anyone on the path.
    """

    def __init__(
        self,
        target: str,
        *,
        keys: str | os.PathLike | KeySet | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        root_certificates: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        retries: int = 4,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        insecure: bool = False,
    ) -> None:
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        target = with_default_port(target)
        self.target = target
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.max_message_bytes = int(max_message_bytes)
        keep_freed_memory()  # blocks reuse freed memory instead of faulting it in again
        if isinstance(keys, KeySet):
            self.keys = keys
        elif keys is None:
            self.keys = KeySet()
        else:
            self.keys = KeySet.open(keys)
        api_key = api_key.strip() if api_key else None  # e.g. read from a file with a newline
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes + MiB),
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.enable_retries", 0),  # retries are ours: deadline-aware, UNAVAILABLE only
            # a connection of its own: clients in one process otherwise share one TCP
            # connection, hence one server worker
            ("grpc.use_local_subchannel_pool", 1),
        ]
        channel_target, lb_options = _targets.channel_target(target)  # lists, dns:///
        options.extend(lb_options)
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together (mTLS)")
        if root_certificates is not None or client_cert is not None:
            creds = grpc.ssl_channel_credentials(root_certificates, client_key, client_cert)
            self._channel = grpc.secure_channel(channel_target, creds, options=options)
        else:
            if not insecure and not _is_loopback(target):
                raise InsecureTransport(
                    f"refusing a plaintext connection to {target}: pass root_certificates= "
                    "(the server's CA) for TLS, or insecure=True to accept that the network "
                    "can read model metadata and API keys and impersonate the server"
                )
            if api_key and not _is_loopback(target):
                warnings.warn(
                    f"sending an API key to {target} without TLS: pass root_certificates= "
                    "(the server's CA) so the key is not readable on the network",
                    stacklevel=2,
                )
            self._channel = grpc.insecure_channel(channel_target, options=options)
        self._stub = heml_pb2_grpc.InferenceStub(self._channel)
        self._closed = False
        self._server: ServerInfo | None = None
        self._lock = threading.Lock()
        self.retried = 0  # attempts repeated after UNAVAILABLE (a replica down or draining)

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Client is closed; create a new one")

    # ------------------------------------------------------------ calls
    def _unary(self, method, request, timeout: float | None = None):
        """One unary call with deadline and retries on UNAVAILABLE."""
        self._check_open()
        budget = timeout or self.timeout
        deadline = time.monotonic() + budget
        delay = 0.1
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    f"{self.target}: no answer within {budget:g} s", code="DEADLINE_EXCEEDED"
                )
            try:
                return method(request, timeout=left, metadata=self._metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise translate(exc, self.target) from None
            with self._lock:
                self.retried += 1
            time.sleep(min(delay * (1 + random.random()), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _check_server(self, server: pb.ServerInfo) -> ServerInfo:
        info = ServerInfo(server.protocol_version, server.server_version, server.tenseal_version)
        ours, theirs = PROTOCOL_VERSION.split(".")[0], (info.protocol_version or "0").split(".")[0]
        if ours != theirs:
            raise VersionMismatch(
                f"{self.target} speaks heml protocol {info.protocol_version or 'unknown'}; this "
                f"client speaks {PROTOCOL_VERSION} (major versions must match)",
                code="FAILED_PRECONDITION",
            )
        self._server = info
        return info

    def server_info(self) -> ServerInfo:
        if self._server is None:
            self.models()
        return self._server

    def models(self) -> list[ModelInfo]:
        """Metadata of every served model (latest versions)."""
        resp = self._unary(self._stub.ListModels, pb.ListModelsRequest())
        self._check_server(resp.server)
        return [model_info_from_pb(m) for m in resp.models]

    def model(self, name: str, version: int | None = None) -> RemoteModel:
        """A handle to one served model (fetches its metadata)."""
        resp = self._unary(self._stub.GetModel, pb.GetModelRequest(name=name, version=version or 0))
        self._check_server(resp.server)
        return RemoteModel(self, model_info_from_pb(resp))


class RemoteModel:
    """A served model, scored under encryption; scikit-learn's predict* shapes and dtypes."""

    def __init__(self, client: Client, info: ModelInfo) -> None:
        self.client = client
        self.info = info
        # a key of its own per (server, model), derived from the key set's master seed
        keys = client.keys.for_peer(client.target, info.name)
        self._key_label = keys.label
        self._codec = ClientCodec(info.plans, info.n_features, info.n_outputs, keys)
        self.last_call = CallStats()
        self._key_id = ""
        self._public_key: tuple[bytes, bytes] | None = None  # (nonce, p0), model-privacy mode
        self._rejected = ""  # why a reply was rejected (the key is then retired)

    def _register_key(self, force: bool = False) -> str:
        """Model-privacy mode: upload the public key's p0 for a fresh nonce (once per model
        object; again, with the same nonce and p0, when another worker process answers)."""
        if self._key_id and not force:
            return self._key_id
        if self._public_key is None:
            from .he.encrypt import public_key_p0
            from .he.private import KEY_NONCE_BYTES

            plan = self.info.plans[PRIVATE]
            nonce = os.urandom(KEY_NONCE_BYTES)
            # the per-(server, model) key that also decrypts this model's replies
            self._public_key = (nonce, public_key_p0(self._codec.keys.get(plan.params), nonce))
        nonce, p0 = self._public_key
        reply = self.client._unary(
            self.client._stub.RegisterKey,
            pb.RegisterKeyRequest(
                model=self.info.name, version=self.info.version, public_key=p0, key_nonce=nonce
            ),
        )
        self._key_id = reply.key_id
        return self._key_id

    def __repr__(self) -> str:
        i = self.info
        return (
            f"<RemoteModel {i.name} v{i.version} {i.task} d={i.n_features} k={i.n_outputs} "
            f"{i.describe_dp()} at {self.client.target}>"
        )

    @property
    def classes_(self) -> np.ndarray | None:
        return self.info.classes

    # ------------------------------------------------------------ sklearn-style API
    def predict(self, X: Any, *, layout: str | None = None) -> np.ndarray:
        i = self.info
        return finish_predict(
            self.scores(X, layout=layout), i.task, i.link, i.classes, i.output_ndim
        )

    def predict_proba(self, X: Any, *, layout: str | None = None) -> np.ndarray:
        if self.info.task == "regression":
            raise AttributeError("predict_proba is for classifiers")
        return finish_predict_proba(self.scores(X, layout=layout), self.info.task, self.info.link)

    def decision_function(self, X: Any, *, layout: str | None = None) -> np.ndarray:
        i = self.info
        return finish_decision_function(
            self.scores(X, layout=layout), i.task, i.link, i.output_ndim
        )

    def scores(self, X: Any, *, layout: str | None = None) -> np.ndarray:
        """W·x + b under encryption: (n, k) float64 (the server never sees x or the result).

        Each score carries fresh noise within the plan's published error bound (heml.he.decrypt:
        it hides the part of the decryption error that depends on the secret key)."""
        self._check_not_retired()
        info = self.info
        # names, finiteness, imputation, one-hot, bounds, row-norm clip: all in plaintext here
        Z = info.bounds.normalize(info.preprocessing.model_features(X, info.bounds))
        n = Z.shape[0]
        stats = CallStats(samples=n)
        started = time.perf_counter()
        out = np.empty((n, info.n_outputs))
        if n:
            blocks = self._codec.blocks(n, layout)
            for b in blocks:
                stats.layouts[b.layout] = stats.layouts.get(b.layout, 0) + b.n
            stats.blocks = len(blocks)
            if len(blocks) == 1 and self._fits_one_message(blocks[0]):
                self._score_unary(Z, blocks[0], out, stats)
            else:
                for i in range(0, len(blocks), BLOCKS_PER_STREAM):
                    self._score_stream(Z, blocks[i : i + BLOCKS_PER_STREAM], out, stats)
        stats.seconds = time.perf_counter() - started
        self.last_call = stats
        return out

    def _check_not_retired(self) -> None:
        """Refuse to score with a key that decrypted a rejected reply (this handle's or
        another's): before anything is encrypted or sent."""
        if not self._rejected and self._key_retired():
            self._rejected = "another handle of this model rejected a reply"
        if self._rejected:
            raise ReplyRejected(
                f"{self.client.target}: model {self.info.name} sent a reply that failed the "
                f"client's checks ({self._rejected}); its key is retired: get a new handle "
                "with client.model()",
                code="DATA_LOSS",
            )

    def _key_retired(self) -> bool:
        """Whether this handle's key was retired since it was derived (any handle, any time)."""
        current = self.client.keys.for_peer(self.client.target, self.info.name)
        return current.label != self._key_label

    def _decrypt(self, replies: list[bytes], block: Block) -> np.ndarray:
        """Decrypt one block's replies; a reply that fails the checks retires the key.

        Whether a reply was accepted is itself a signal a malicious server can craft replies
        to learn from (a reaction attack), so after one rejection the key is retired (in the
        key file too) and this handle refuses further calls: at most one such bit per key."""
        try:
            return self._codec.decrypt(replies, block)
        except InvalidCiphertext as exc:
            self._rejected = str(exc)
            self.client.keys.retire(self.client.target, self.info.name)
            raise ReplyRejected(
                f"{self.client.target}: model {self.info.name}: {exc}; this key is retired "
                "(a new client.model() handle derives a fresh one)",
                code="DATA_LOSS",
                details=str(exc),
            ) from None

    # ------------------------------------------------------------ transport
    def _header(self, block: Block, total: int) -> pb.PredictRequest:
        return pb.PredictRequest(
            model=self.info.name,
            version=self.info.version,
            layout=LAYOUT_TO_PB[block.layout],
            n=block.n,
            samples_per_ciphertext=block.s,
            total_ciphertexts=total,
            request_id=uuid.uuid4().hex[:16],
            key_id=self._register_key() if block.layout == PRIVATE else "",
        )

    def _fits_one_message(self, block: Block) -> bool:
        per_ct = 7 * self.info.plans[block.layout].params.n + 64 + 8
        return self._codec.ciphertext_count(block) * per_ct < self.client.max_message_bytes

    def _score_unary(self, Z: np.ndarray, block: Block, out: np.ndarray, stats: CallStats) -> None:
        cts = self._codec.encrypt(Z[block.start : block.stop], block)
        request = self._header(block, len(cts))
        request.ciphertexts.extend(cts)
        stats.ciphertexts_sent += len(cts)
        stats.bytes_sent += request.ByteSize()
        try:
            reply = self.client._unary(self.client._stub.Predict, request)
        except ModelNotFound as exc:
            if block.layout != PRIVATE or "not registered" not in str(exc):
                raise
            # another worker process answered: register there too (idempotent) and retry
            request.key_id = self._register_key(force=True)
            reply = self.client._unary(self.client._stub.Predict, request)
        stats.bytes_received += reply.ByteSize()
        stats.server_seconds += reply.server_seconds
        stats.server_cpu_seconds += reply.server_cpu_seconds
        out[block.start : block.stop] = self._decrypt(list(reply.replies), block)

    def _messages(
        self,
        Z: np.ndarray,
        blocks: list[Block],
        stats: CallStats,
        window: threading.Semaphore,
        cancelled: threading.Event,
    ) -> Iterator:
        """Encrypt lazily, message by message, at most WINDOW blocks ahead of the replies.

        gRPC's client stream takes messages as fast as they are produced, so without the
        window a long batch would sit encrypted in memory (gigabytes at d = 8192)."""
        limit = self.client.max_message_bytes
        for block in blocks:
            while not window.acquire(timeout=0.5):
                if cancelled.is_set():
                    return
            plan = self.info.plans[block.layout]
            per_ct = 7 * plan.params.n * len(getattr(plan.params, "primes", (0,))) + 72
            total = self._codec.ciphertext_count(block)
            first = True
            for cts in self._codec.encrypt_iter(
                Z[block.start : block.stop], block, max(1, (limit - 512) // per_ct)
            ):
                msg = self._header(block, total) if first else pb.PredictRequest()
                first = False
                msg.ciphertexts.extend(cts)
                stats.ciphertexts_sent += len(cts)
                stats.bytes_sent += msg.ByteSize()
                yield msg

    def _score_stream(self, Z, blocks: list[Block], out: np.ndarray, stats: CallStats) -> None:
        client = self.client
        client._check_open()
        pending = list(blocks)
        delay = 0.1
        attempts = 0
        while pending:
            budget = client.timeout * (1 + len(pending) / 4)
            done = 0
            window = threading.Semaphore(STREAM_WINDOW)
            cancelled = threading.Event()
            try:
                responses = client._stub.PredictStream(
                    self._messages(Z, pending, stats, window, cancelled),
                    timeout=budget,
                    metadata=client._metadata,
                )
                for block, reply in zip(pending, responses, strict=False):
                    window.release()
                    stats.bytes_received += reply.ByteSize()
                    stats.server_seconds += reply.server_seconds
                    stats.server_cpu_seconds += reply.server_cpu_seconds
                    try:
                        out[block.start : block.stop] = self._decrypt(list(reply.replies), block)
                    except ReplyRejected:
                        cancelled.set()  # stop encrypting; end the call
                        responses.cancel()
                        raise
                    done += 1
            except grpc.RpcError as exc:
                cancelled.set()
                pending = pending[done:]
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempts >= client.retries:
                    raise translate(exc, client.target) from None
                attempts += 1
                with client._lock:
                    client.retried += 1
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            if done != len(pending):
                raise RemoteError(
                    f"{client.target}: stream ended after {done} of {len(pending)} replies",
                    code="UNKNOWN",
                )
            pending = []
