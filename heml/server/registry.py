"""The models a server serves: loaded from a folder of JSON files, versioned by name.

A broken file is reported by name (with the reason) and skipped; the others are served.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import tenseal

from .._version import PROTOCOL_VERSION, __version__
from ..errors import HemlError, ModelError
from ..he.plan import normalized_weights
from ..he.private import PRIVATE, PrivateEvaluator, check_private_quota, make_private_plan
from ..he.scoring import ServerScorer
from ..info import model_info_pb
from ..model import LinearModel
from ..v1 import heml_pb2 as pb

log = logging.getLogger("heml.server")
MAX_MODEL_FILE_BYTES = 64 << 20
# keys the fingerprint of model-privacy models. Drawn when this module is imported: the
# supervisor imports it before forking, so all workers of one server run agree; a restart
# draws a new one (so the fingerprint names the model within one run only).
_FINGERPRINT_KEY = os.urandom(32)


def private_fingerprint(model: LinearModel) -> str:
    """A model-privacy model's published fingerprint: HMAC-SHA256 of its canonical content
    under a random per-run server key, so a client cannot confirm a guessed W by hashing it
    (the plain sha256 of the default mode would)."""
    return hmac.new(_FINGERPRINT_KEY, model.fingerprint().encode(), hashlib.sha256).hexdigest()


class ModelNotServed(HemlError, LookupError):
    """No model (or version) by that name."""


def server_info_pb() -> pb.ServerInfo:
    return pb.ServerInfo(
        protocol_version=PROTOCOL_VERSION,
        server_version=__version__,
        tenseal_version=getattr(tenseal, "__version__", "unknown"),
    )


@dataclass(frozen=True)
class ServedModel:
    model: LinearModel
    scorer: ServerScorer | None  # default layouts (None in model-privacy mode)
    info: pb.ModelInfo
    path: Path
    private: PrivateEvaluator | None = None  # model-privacy mode
    # called once when this (name, version) stops being served here (the shared state frees
    # the version's key registry): {owner id: callable}
    retire_hooks: dict = field(default_factory=dict, compare=False, repr=False)

    def retire(self) -> None:
        """Run the retire hooks (each at most once; a failing hook is logged, not raised)."""
        while self.retire_hooks:
            _owner, hook = self.retire_hooks.popitem()
            try:
                hook()
            except Exception:
                log.exception("retiring %s v%d", self.model.name, self.model.version)


def load_model_file(path: Path) -> ServedModel:
    """Read, validate and plan one model file (raises ModelError with the reason)."""
    size = path.stat().st_size
    if size > MAX_MODEL_FILE_BYTES:
        raise ModelError(f"file is {size} bytes, above the {MAX_MODEL_FILE_BYTES}-byte limit")
    model = LinearModel.load(path)
    center, half_width = model.bounds.center, model.bounds.half_width
    if model.model_privacy:
        plan = make_private_plan(
            model.coef, model.intercept, center, half_width, tolerance=model.tolerance
        )
        # a file written by hand or by an older heml may carry a quota that gives W away
        check_private_quota(plan, model.n_features, model.privacy["max_predictions_per_key"])
        Wn, bn = normalized_weights(model.coef, model.intercept, center, half_width)
        private = PrivateEvaluator(plan, Wn, bn)
        info = model_info_pb(model, {PRIVATE: plan}, server_info_pb(), private_fingerprint(model))
        return ServedModel(model, None, info, path, private)
    scorer = ServerScorer(model.coef, model.intercept, center, half_width, model.tolerance)
    info = model_info_pb(model, scorer.plans, server_info_pb(), model.fingerprint())
    return ServedModel(model, scorer, info, path)


def scan(models_dir: str | Path) -> tuple[list[ServedModel], dict[str, str]]:
    """Load every ``*.json`` in the folder; return the models and {file name: error}."""
    folder = Path(models_dir)
    if not folder.is_dir():
        raise ModelError(f"model folder {str(folder)!r} does not exist or is not a folder")
    models: list[ServedModel] = []
    errors: dict[str, str] = {}
    seen: dict[tuple[str, int], str] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue  # hidden files: ledgers, editors' temporaries
        try:
            served = load_model_file(path)
        except (ModelError, OSError, ValueError) as exc:
            errors[path.name] = str(exc)
            continue
        key = (served.model.name, served.model.version)
        if key in seen:
            errors[path.name] = (
                f"model {key[0]!r} version {key[1]} is already served from {seen[key]}"
            )
            continue
        seen[key] = path.name
        models.append(served)
    return models, errors


class Registry:
    """Thread-safe lookup of served models by (name, version); version 0 means latest.

    ``refresh()`` re-reads the model folder: new or changed files are loaded and swapped in
    atomically (requests in flight keep the model they started with); a file that fails to
    load keeps its previous version serving; a removed file stops being served.
    """

    def __init__(self, models: list[ServedModel], folder: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self.folder = Path(folder) if folder is not None else None
        self._files: dict[str, tuple[tuple, ServedModel]] = {}
        self._rejected: dict[str, tuple] = {}  # file -> signature that failed to load
        for m in models:
            self._files[m.path.name] = (_signature(m.path), m)
        self._by_name: dict[str, dict[int, ServedModel]] = {}
        self._rebuild()

    @classmethod
    def from_folder(cls, models_dir: str | Path) -> tuple[Registry, dict[str, str]]:
        models, errors = scan(models_dir)
        for name, reason in errors.items():
            # pragma: no mutate start, log call: no behaviour to test
            log.warning("skipping model file %s: %s", name, reason)
            # pragma: no mutate end
        registry = cls(models, models_dir)
        for name in errors:
            with contextlib.suppress(OSError):
                registry._rejected[name] = _signature(Path(models_dir) / name)
        return registry, errors

    def _rebuild(self) -> None:
        index: dict[str, dict[int, ServedModel]] = {}
        for _sig, m in self._files.values():
            index.setdefault(m.model.name, {})[m.model.version] = m
        self._by_name = index

    def refresh(self) -> dict[str, str]:
        """Pick up added, changed and removed model files; returns {file: error} for failures."""
        if self.folder is None or not self.folder.is_dir():
            return {}
        errors: dict[str, str] = {}
        present = {p.name: p for p in self.folder.glob("*.json") if not p.name.startswith(".")}
        with self._lock:
            files = dict(self._files)
        changed = False
        for name in list(files):
            if name not in present:
                # pragma: no mutate start, log call: no behaviour to test
                log.info("model file %s removed: no longer served", name)
                # pragma: no mutate end
                del files[name]
                changed = True
        for name, path in sorted(present.items()):
            try:
                sig = _signature(path)
            except OSError:
                continue
            old = files.get(name)
            if (old is not None and old[0] == sig) or self._rejected.get(name) == sig:
                continue
            try:
                served = load_model_file(path)
                key = (served.model.name, served.model.version)
                clash = [
                    other
                    for other, (_s, m) in files.items()
                    if other != name and (m.model.name, m.model.version) == key
                ]
                if clash:
                    raise ModelError(
                        f"model {key[0]!r} version {key[1]} is already served from {clash[0]}"
                    )
            except (ModelError, OSError, ValueError) as exc:
                errors[name] = str(exc)
                self._rejected[name] = sig
                # pragma: no mutate start, log call: no behaviour to test
                kept = f"; still serving v{old[1].model.version}" if old else ""
                log.warning("model file %s rejected: %s%s", name, exc, kept)
                # pragma: no mutate end
                continue
            files[name] = (sig, served)
            changed = True
            # pragma: no mutate start, log call: no behaviour to test
            log.info(
                "model %s v%d %s from %s",
                served.model.name,
                served.model.version,
                "reloaded" if old else "added",
                name,
            )
            # pragma: no mutate end
        if changed:
            with self._lock:
                before = [m for _s, m in self._files.values()]
                self._files = files
                self._rebuild()
                served = {(m.model.name, m.model.version) for _s, m in files.values()}
            for m in before:  # versions no longer served (a call in flight keeps its object)
                if (m.model.name, m.model.version) not in served:
                    m.retire()
        return errors

    def watch(self, stop: threading.Event, interval: float = 2.0) -> threading.Thread:
        """Refresh every ``interval`` seconds until ``stop`` is set (a daemon thread)."""

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # never let a bad folder kill the worker
                    # pragma: no mutate start, log call: no behaviour to test
                    log.exception("model folder refresh failed")
                    # pragma: no mutate end

        thread = threading.Thread(target=loop, name="heml-model-watch", daemon=True)
        thread.start()
        return thread

    def get(self, name: str, version: int = 0) -> ServedModel:
        with self._lock:
            versions = self._by_name.get(name)
            if not versions:
                known = ", ".join(sorted(self._by_name)) or "none"
                raise ModelNotServed(f"no model named {name!r} (served: {known})")
            if version == 0:
                return versions[max(versions)]
            if version not in versions:
                raise ModelNotServed(
                    f"model {name!r} has no version {version} (versions: "
                    f"{', '.join(str(v) for v in sorted(versions))})"
                )
            return versions[version]

    def latest(self) -> list[ServedModel]:
        with self._lock:
            return [v[max(v)] for _, v in sorted(self._by_name.items())]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._by_name.values())


def _signature(path: Path) -> tuple:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)
