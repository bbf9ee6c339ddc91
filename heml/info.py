"""Model metadata as clients see it (``GetModel``), and its conversion to and from protobuf.

The server builds ``ModelInfo`` messages from a LinearModel and its layout plans; the client
turns them back into a ``ModelInfo`` value, checking that the HE parameters it is offered are
heml's 128-bit-secure ones before it encrypts anything under them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ParameterError
from .he.params import SEED_PRNG, HEParams
from .he.plan import COLUMN, MAX_DIGIT_BITS, MAX_DIGITS, REPLY_BITS, ROW, LayoutPlan
from .he.private import HIDING_BITS, PRIVATE, PrivatePlan, RNSParams
from .model import LinearModel, ModelFacts
from .preprocessing import Bounds, Preprocessing
from .v1 import heml_pb2 as pb

TASK_TO_PB = {"regression": pb.REGRESSION, "binary": pb.BINARY, "multiclass": pb.MULTICLASS}
TASK_FROM_PB = {v: k for k, v in TASK_TO_PB.items()}
LINK_TO_PB = {
    "identity": pb.IDENTITY,
    "logistic": pb.LOGISTIC,
    "softmax": pb.SOFTMAX,
    "ovr_logistic": pb.OVR_LOGISTIC,
    "modified_huber": pb.MODIFIED_HUBER,
    "none": pb.NO_PROBABILITY,
    "exp": pb.EXP,
}
LINK_FROM_PB = {v: k for k, v in LINK_TO_PB.items()}
LAYOUT_TO_PB = {ROW: pb.ROW, COLUMN: pb.COLUMN, PRIVATE: pb.PRIVATE}
LAYOUT_FROM_PB = {v: k for k, v in LAYOUT_TO_PB.items()}


@dataclass(frozen=True)
class ServerInfo:
    protocol_version: str
    server_version: str
    tenseal_version: str


@dataclass(frozen=True)
class ModelInfo(ModelFacts):
    """What a client knows about a served model (no weights)."""

    name: str
    version: int
    task: str
    link: str
    n_features: int
    n_outputs: int
    output_ndim: int
    classes: np.ndarray | None
    preprocessing: Preprocessing
    bounds: Bounds
    plans: dict[str, LayoutPlan]
    dp: dict
    audit: dict | None
    tolerance: float
    estimator: str
    fingerprint: str
    server: ServerInfo | None = None
    extra: dict = field(default_factory=dict)
    privacy: dict | None = None

    def describe_dp(self) -> str:
        if not self.is_private:
            return "not private (trained without differential privacy)"
        return (
            f"(ε={self.dp.get('epsilon'):g}, δ={self.dp.get('delta'):g})-DP, "
            f"{self.dp.get('neighbouring', 'replace-one')} neighbours, "
            f"{self.dp.get('mechanism', 'unknown mechanism')}"
        )


# ---------------------------------------------------------------------- server side
def plan_to_pb(plan: LayoutPlan | PrivatePlan, d: int) -> pb.LayoutPlan:
    if isinstance(plan, PrivatePlan):
        return pb.LayoutPlan(
            layout=pb.PRIVATE,
            params=pb.HEParameters(
                scheme="CKKS",
                poly_modulus_degree=plan.params.n,
                coeff_modulus=list(plan.params.primes),
                security_bits=128,
                seed_prng=SEED_PRNG,
            ),
            log2_scale_x=plan.log2_scale_x,
            log2_scale_w=plan.log2_scale_w,
            digit_bits=0,
            digits=1,
            reply_bits=plan.reply_bits,
            error_bound=plan.error_bound,
            max_block_samples=plan.max_samples_per_ciphertext(d),
            log2_flood=plan.log2_flood,
            hiding_bits=plan.hiding_bits,
        )
    return pb.LayoutPlan(
        layout=LAYOUT_TO_PB[plan.layout],
        params=pb.HEParameters(
            scheme="CKKS",
            poly_modulus_degree=plan.params.n,
            coeff_modulus=[plan.params.q],
            security_bits=128,
            seed_prng=SEED_PRNG,
        ),
        log2_scale_x=plan.log2_scale_x,
        log2_scale_w=plan.log2_scale_w,
        digit_bits=plan.digit_bits,
        digits=plan.digits,
        reply_bits=plan.reply_bits,
        error_bound=plan.error_bound,
        max_block_samples=plan.max_samples_per_ciphertext(d),
    )


def model_info_pb(
    model: LinearModel, plans: dict[str, LayoutPlan], server: pb.ServerInfo, fingerprint: str
) -> pb.ModelInfo:
    dp = model.dp or {}
    dp_pb = pb.DPGuarantee(
        private=bool(dp.get("private")),
        epsilon=float(dp.get("epsilon") or 0.0),
        delta=float(dp.get("delta") or 0.0),
        mechanism=str(dp.get("mechanism", "")),
        neighbouring=str(dp.get("neighbouring", "")),
        accountant=str(dp.get("accountant", "")),
        not_covered=[str(x) for x in dp.get("not_covered", [])],
        details_json=json.dumps(dp, default=str),
    )
    classes = model.classes
    return pb.ModelInfo(
        name=model.name,
        version=model.version,
        task=TASK_TO_PB[model.task],
        n_features=model.n_features,
        n_outputs=model.n_outputs,
        link=LINK_TO_PB[model.link],
        classes=[str(c) for c in classes.tolist()] if classes is not None else [],
        classes_json=json.dumps(classes.tolist()) if classes is not None else "",
        classes_dtype=classes.dtype.str if classes is not None else "",
        feature_names=model.feature_names,
        preprocessing_json=json.dumps(model.preprocessing.to_dict()),
        bounds=pb.FeatureBounds(
            lower=model.bounds.lower.tolist(),
            upper=model.bounds.upper.tolist(),
            out_of_bounds=model.bounds.out_of_bounds,
            encode_lower=model.bounds.encode_lower.tolist(),
            encode_upper=model.bounds.encode_upper.tolist(),
        ),
        layouts=[plan_to_pb(p, model.n_features) for p in plans.values()],
        dp=dp_pb,
        audit=pb.AuditSummary(
            present=model.audit is not None, json=json.dumps(model.audit) if model.audit else ""
        ),
        server=server,
        estimator=model.estimator,
        fingerprint=fingerprint,
        output_ndim=model.output_ndim,
        tolerance=model.tolerance,
        privacy=pb.ModelPrivacy(
            enabled=model.model_privacy,
            max_predictions_per_key=(model.privacy or {}).get("max_predictions_per_key", 0),
            hiding_bits=HIDING_BITS if model.model_privacy else 0,
        ),
    )


# ---------------------------------------------------------------------- client side
def plan_from_pb(msg: pb.LayoutPlan) -> LayoutPlan | PrivatePlan:
    layout = LAYOUT_FROM_PB.get(msg.layout)
    if layout is None:
        raise ParameterError(f"server offers an unknown layout ({msg.layout})")
    p = msg.params
    if layout == PRIVATE:
        if p.scheme != "CKKS" or p.seed_prng != SEED_PRNG or len(p.coeff_modulus) < 2:
            raise ParameterError("server offers unsupported model-privacy parameters")
        params = RNSParams(int(p.poly_modulus_degree), tuple(int(q) for q in p.coeff_modulus))
        if msg.hiding_bits < HIDING_BITS or msg.reply_bits not in REPLY_BITS:
            raise ParameterError("server offers weaker model-privacy settings than heml's")
        return PrivatePlan(
            params,
            int(msg.log2_scale_x),
            int(msg.log2_scale_w),
            int(msg.reply_bits),
            float(msg.log2_flood),
            int(msg.hiding_bits),
            float(msg.error_bound),
        )
    if p.scheme != "CKKS" or len(p.coeff_modulus) != 1 or p.seed_prng != SEED_PRNG:
        raise ParameterError(
            f"server offers unsupported parameters (scheme {p.scheme!r}, "
            f"{len(p.coeff_modulus)} primes, seed PRNG {p.seed_prng!r})"
        )
    params = HEParams(int(p.poly_modulus_degree), int(p.coeff_modulus[0]))  # checks 128-bit
    if not (1 <= msg.digits <= MAX_DIGITS and 2 <= msg.digit_bits <= MAX_DIGIT_BITS):
        raise ParameterError("server offers an invalid weight-digit split")
    if msg.reply_bits not in REPLY_BITS:
        raise ParameterError(f"server offers an invalid reply width {msg.reply_bits}")
    if not (1 <= msg.log2_scale_x <= 60 and 0 <= msg.log2_scale_w <= 62):
        raise ParameterError("server offers invalid scales")
    return LayoutPlan(
        layout,
        params,
        int(msg.log2_scale_x),
        int(msg.log2_scale_w),
        int(msg.digit_bits),
        int(msg.digits),
        int(msg.reply_bits),
        float(msg.error_bound),
    )


def model_info_from_pb(msg: pb.ModelInfo) -> ModelInfo:
    classes = None
    if msg.classes_json:
        values: list[Any] = json.loads(msg.classes_json)
        classes = np.array(values, dtype=np.dtype(msg.classes_dtype) if msg.classes_dtype else None)
    dp = json.loads(msg.dp.details_json) if msg.dp.details_json else {}
    audit = json.loads(msg.audit.json) if msg.audit.present and msg.audit.json else None
    server = (
        ServerInfo(
            msg.server.protocol_version, msg.server.server_version, msg.server.tenseal_version
        )
        if msg.HasField("server")
        else None
    )
    return ModelInfo(
        name=msg.name,
        version=int(msg.version),
        task=TASK_FROM_PB.get(msg.task, "regression"),
        link=LINK_FROM_PB.get(msg.link, "identity"),
        n_features=int(msg.n_features),
        n_outputs=int(msg.n_outputs),
        output_ndim=int(msg.output_ndim) or 1,
        classes=classes,
        preprocessing=Preprocessing.from_dict(json.loads(msg.preprocessing_json or "{}")),
        bounds=Bounds(
            np.asarray(msg.bounds.lower),
            np.asarray(msg.bounds.upper),
            msg.bounds.out_of_bounds,
            np.asarray(msg.bounds.encode_lower) if msg.bounds.encode_lower else None,
            np.asarray(msg.bounds.encode_upper) if msg.bounds.encode_upper else None,
        ),
        plans={plan.layout: plan for plan in (plan_from_pb(p) for p in msg.layouts)},
        dp=dp,
        audit=audit,
        tolerance=float(msg.tolerance),
        estimator=msg.estimator,
        fingerprint=msg.fingerprint,
        server=server,
        privacy={
            "enabled": True,
            "max_predictions_per_key": int(msg.privacy.max_predictions_per_key),
            "hiding_bits": int(msg.privacy.hiding_bits),
        }
        if msg.privacy.enabled
        else None,
    )
