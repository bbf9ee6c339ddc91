"""LinearModel: the one artifact training, serving and clients share.

A plain value object: weights W (k × d) and bias b (k) over the model features, the link that
turns scores into predictions, class labels, the client-side preprocessing and declared feature
bounds, the DP guarantee and the audit summary. Saved as schema-versioned JSON, never pickle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import links
from ._files import write_atomically
from ._version import __version__
from .errors import ModelError
from .preprocessing import Bounds, Preprocessing

SCHEMA = "heml.linear-model"
SCHEMA_VERSION = 1
TASKS = ("regression", "binary", "multiclass")
DEFAULT_TOLERANCE = 1e-4
MAX_FEATURES = 1 << 16
MAX_OUTPUTS = 1 << 10
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 128 or set(name) - _NAME_CHARS:
        raise ModelError(
            f"model name must be 1-128 characters of letters, digits, '_', '.', '-'; got {name!r}"
        )
    return name


class ModelFacts:
    """Accessors shared by the artifact (LinearModel) and what clients see (ModelInfo)."""

    preprocessing: Preprocessing
    dp: dict
    privacy: dict | None

    @property
    def feature_names(self) -> list[str]:
        """Model features (after client-side preprocessing), the columns W multiplies."""
        return self.preprocessing.feature_names

    @property
    def input_names(self) -> list[str]:
        """Raw columns the client must provide."""
        return self.preprocessing.input_names

    @property
    def is_private(self) -> bool:
        """Trained with differential privacy."""
        return bool(self.dp.get("private"))

    @property
    def model_privacy(self) -> bool:
        """Served only in model-privacy mode (re-randomized, flooded replies; per-key quota)."""
        return bool(self.privacy and self.privacy.get("enabled"))


class LinearModel(ModelFacts):
    """A linear or logistic model as served by heml.

    Parameters
    ----------
    name : str
        Served name (letters, digits, ``_ . -``).
    coef : array-like of shape (k, d)
        Weights over the model features (scalers already folded in).
    intercept : array-like of shape (k,)
    task : {"regression", "binary", "multiclass"}
    link : str
        One of ``heml.links.ALL_LINKS``; the client applies it after decryption.
    classes : sequence, optional
        Class labels in score order (classifiers only). Binary models have k = 1.
    preprocessing : Preprocessing, optional
        Raw input columns -> model features; numeric passthrough of ``feature_names`` by default.
    bounds : Bounds
        Declared bounds of every model feature; encrypted scoring is exact inside them.
    dp : dict, optional
        The differential-privacy guarantee (empty: trained without DP).
    """

    def __init__(
        self,
        *,
        name: str,
        coef: Any,
        intercept: Any,
        task: str,
        link: str,
        bounds: Bounds,
        classes: Sequence | None = None,
        feature_names: Sequence[str] | None = None,
        preprocessing: Preprocessing | None = None,
        version: int = 1,
        output_ndim: int = 1,
        dp: dict | None = None,
        audit: dict | None = None,
        estimator: str = "",
        tolerance: float = DEFAULT_TOLERANCE,
        created: str | None = None,
        privacy: dict | None = None,
    ) -> None:
        self.name = validate_name(name)
        W = np.array(coef, dtype=np.float64, ndmin=2)
        b = np.array(intercept, dtype=np.float64).reshape(-1)
        if W.ndim != 2:
            raise ModelError(f"coef must be 2-D (k, d), got shape {W.shape}")
        k, d = W.shape
        if b.size == 1 and k > 1:
            b = np.full(k, float(b[0]))
        if b.shape != (k,):
            raise ModelError(f"intercept has {b.size} values for {k} outputs")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            raise ModelError("coef and intercept must be finite")
        if not 1 <= d <= MAX_FEATURES:
            raise ModelError(f"models need 1 to {MAX_FEATURES} features, got {d}")
        if not 1 <= k <= MAX_OUTPUTS:
            raise ModelError(f"models need 1 to {MAX_OUTPUTS} outputs, got {k}")
        if task not in TASKS:
            raise ModelError(f"task must be one of {TASKS}, got {task!r}")
        if link not in links.ALL_LINKS:
            raise ModelError(f"link must be one of {links.ALL_LINKS}, got {link!r}")
        if (task == "regression") != (link in links.REGRESSION_LINKS):
            raise ModelError(f"link {link!r} does not fit task {task!r}")
        if not isinstance(version, int | np.integer) or version < 1:
            raise ModelError(f"version must be a positive integer, got {version!r}")
        if not (isinstance(tolerance, float | int) and 0 < tolerance < 1):
            raise ModelError(f"tolerance must be in (0, 1), got {tolerance!r}")

        if preprocessing is None:
            names = (
                list(feature_names) if feature_names is not None else [f"x{i}" for i in range(d)]
            )
            preprocessing = Preprocessing.numeric(names)
        if preprocessing.n_features != d:
            raise ModelError(
                f"preprocessing produces {preprocessing.n_features} features; coef has {d}"
            )
        if feature_names is not None and list(feature_names) != preprocessing.feature_names:
            raise ModelError("feature_names disagree with the preprocessing's feature names")
        if bounds.lower.shape != (d,):
            raise ModelError(f"bounds have {bounds.lower.size} values for {d} features")

        if task == "regression":
            if classes:
                raise ModelError("regression models have no classes")
            cls_arr = None
        else:
            if classes is None:
                raise ModelError(f"{task} models need classes")
            cls_arr = np.asarray(classes)
            if cls_arr.ndim != 1 or len(set(cls_arr.tolist())) != cls_arr.size:
                raise ModelError("classes must be a 1-D sequence of distinct labels")
            want = 2 if task == "binary" else k
            if cls_arr.size != want or (task == "binary" and k != 1):
                raise ModelError(
                    f"{task} model with {k} score(s) must have {want} classes, got {cls_arr.size}"
                )
            if task == "multiclass" and k < 3:
                raise ModelError("multiclass models have at least 3 classes")
        if output_ndim not in (1, 2) or (output_ndim == 1 and task == "regression" and k != 1):
            raise ModelError(f"invalid output_ndim {output_ndim} for {k} regression outputs")

        self.coef = W
        self.intercept = b
        self.task = task
        self.link = link
        self.classes = cls_arr
        self.preprocessing = preprocessing
        self.bounds = bounds
        self.version = int(version)
        self.output_ndim = int(output_ndim)
        self.dp = dict(dp or {})
        self.audit = dict(audit) if audit else None
        self.estimator = estimator
        self.tolerance = float(tolerance)
        self.created = created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.privacy = _check_privacy(privacy, d)

    # ------------------------------------------------------------------ shape
    @property
    def n_features(self) -> int:
        """d: model features W multiplies (after preprocessing)."""
        return self.coef.shape[1]

    @property
    def n_outputs(self) -> int:
        """k: scores per sample (1 for regression and binary)."""
        return self.coef.shape[0]

    # ------------------------------------------------------------------ plaintext reference
    def transform(self, X: Any) -> np.ndarray:
        """Raw inputs -> model features, checked or clipped against the bounds: (n, d)."""
        return self.preprocessing.model_features(X, self.bounds)

    def scores(self, X: Any) -> np.ndarray:
        """W·x + b for each sample: (n, k). What the server computes under encryption."""
        Z = self.transform(X)
        return Z @ self.coef.T + self.intercept

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores with scikit-learn's shape: (n,) for one output, (n, k) otherwise."""
        return self.finish_decision_function(self.scores(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predictions with scikit-learn's shape and dtype."""
        return self.finish_predict(self.scores(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n, n_classes), as the source estimator computes them."""
        return self.finish_predict_proba(self.scores(X))

    # The three finishers turn (n, k) scores into results; the SDK uses the same functions.
    def finish_decision_function(self, scores: np.ndarray) -> np.ndarray:
        return links.finish_decision_function(scores, self.task, self.link, self.output_ndim)

    def finish_predict(self, scores: np.ndarray) -> np.ndarray:
        return links.finish_predict(scores, self.task, self.link, self.classes, self.output_ndim)

    def finish_predict_proba(self, scores: np.ndarray) -> np.ndarray:
        return links.finish_predict_proba(scores, self.task, self.link)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        classes = None
        if self.classes is not None:
            classes = {"values": [_label_to_json(c) for c in self.classes.tolist()]}
            classes["dtype"] = self.classes.dtype.str
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "link": self.link,
            "output_ndim": self.output_ndim,
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "classes": classes,
            "preprocessing": self.preprocessing.to_dict(),
            "bounds": self.bounds.to_dict(),
            "tolerance": self.tolerance,
            "privacy": self.privacy,
            "dp": self.dp,
            "audit": self.audit,
            "estimator": self.estimator,
            "created": self.created,
            "heml_version": __version__,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LinearModel:
        if not isinstance(data, dict):
            raise ModelError("a model file must hold a JSON object")
        if data.get("schema") != SCHEMA:
            raise ModelError(f"not a heml model (schema {data.get('schema')!r}, want {SCHEMA!r})")
        sv = data.get("schema_version")
        if sv != SCHEMA_VERSION:
            raise ModelError(
                f"model schema_version {sv!r} is not supported by heml {__version__} "
                f"(supported: {SCHEMA_VERSION}); upgrade heml or re-export the model"
            )
        missing = [
            key
            for key in ("name", "task", "link", "coef", "intercept", "preprocessing", "bounds")
            if key not in data
        ]
        if missing:
            raise ModelError(f"model file lacks field(s): {', '.join(missing)}")
        classes = None
        if data.get("classes"):
            c = data["classes"]
            try:
                classes = np.array(c["values"], dtype=np.dtype(c.get("dtype", "O")))
            except (TypeError, ValueError, KeyError) as exc:
                raise ModelError(f"invalid classes: {exc}") from exc
        try:
            return cls(
                name=data["name"],
                coef=data["coef"],
                intercept=data["intercept"],
                task=data["task"],
                link=data["link"],
                classes=classes,
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                bounds=Bounds.from_dict(data["bounds"]),
                version=data.get("version", 1),
                output_ndim=data.get("output_ndim", 1),
                dp=data.get("dp") or {},
                audit=data.get("audit"),
                estimator=data.get("estimator", ""),
                tolerance=data.get("tolerance", DEFAULT_TOLERANCE),
                created=data.get("created"),
                privacy=data.get("privacy"),
            )
        except ModelError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelError(f"invalid model file content: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON (what clients see as the model's identity)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as JSON, atomically (a reader never sees half a file)."""
        return write_atomically(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearModel:
        """Read a model file written by ``save`` (JSON only; nothing is executed)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ModelError(f"cannot read model file {str(path)!r}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path.name}: not valid JSON ({exc})") from exc
        return cls.from_dict(data)

    def __repr__(self) -> str:
        dp = f", ε={self.dp.get('epsilon')}" if self.is_private else ""
        return (
            f"LinearModel(name={self.name!r}, version={self.version}, task={self.task!r}, "
            f"link={self.link!r}, d={self.n_features}, k={self.n_outputs}{dp})"
        )


def _check_privacy(privacy: dict | None, d: int) -> dict | None:
    if not privacy or not privacy.get("enabled"):
        return None
    limit = privacy.get("max_predictions_per_key")
    if not isinstance(limit, int) or not 1 <= limit < max(d, 2):
        raise ModelError(
            f"model privacy needs max_predictions_per_key in [1, d-1] = [1, {max(d - 1, 1)}] "
            f"(d+1 exact predictions determine a linear model), got {limit!r}"
        )
    return {"enabled": True, "max_predictions_per_key": limit}


def _label_to_json(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v
