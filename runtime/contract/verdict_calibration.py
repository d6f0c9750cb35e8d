"""Calibration records: temperature scaling and operating points, the ONE implementation of applying them.

A record is fitted by `maskclip-calibrate` (maskclip_core.calibrate) on held-out data and travels in
the artifact manifest under "calibration". The runtime and `maskclip-eval` both turn a raw fake
probability into a calibrated one and a verdict through `Calibration` here, so a deployed verdict
is exactly the one the evaluation measured.

Temperature scaling on MaskCLIP's two-class softmax: fake_prob = sigmoid(l_fake - l_real), so the
calibrated probability is sigmoid(logit(fake_prob) / T). The logit is recovered from the
probability (clipped to [PROB_EPS, 1 - PROB_EPS]: float32 softmax saturates at 1.0), which every
artifact and checkpoint produces, whatever its graph.

Verdicts: "fake" when the calibrated probability is above the fake threshold (the strict operating
point, e.g. at most 1 % of real photos flagged), "real" when it is at or below the real threshold
(the loose one, e.g. 5 %), "uncertain" in between. Without a record: the plain threshold, no band.
The record's sha256 covers its canonical JSON, so an edited threshold is refused, not applied.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..kernel.atomic import write_text_atomic

CALIBRATION_FORMAT = "maskclip-calibration"
CALIBRATION_VERSION = 1
PROB_EPS = 1e-7
VERDICTS = ("real", "uncertain", "fake")
PLAIN_OPERATING_POINT = "threshold"  # the name records carry when no calibration is applied


class CalibrationError(InputError, ValueError):
    """A calibration record that cannot be trusted or used; the message is one line."""


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold on the calibrated probability, chosen for a target false-positive rate on real images."""

    name: str  # e.g. "fpr-1%"
    target_fpr: float
    threshold: float  # verdict "fake" when calibrated_prob > threshold
    fpr: float  # measured on the data the record was fitted on
    tpr: float

    @classmethod
    def from_dict(cls, d: dict) -> OperatingPoint:
        return cls(str(d["name"]), float(d["target_fpr"]), float(d["threshold"]), float(d["fpr"]), float(d["tpr"]))


def operating_point_name(target_fpr: float) -> str:
    return f"fpr-{target_fpr * 100:g}%"


def logit(prob) -> np.ndarray:
    """fake_prob -> logit(l_fake - l_real), float64, from the probability clipped away from 0 and 1."""
    p = np.clip(np.asarray(prob, dtype=np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))  # stable for large |z|


def scale_probabilities(prob, temperature: float) -> np.ndarray:
    """Raw fake probabilities -> temperature-scaled ones (float64)."""
    return sigmoid(logit(prob) / temperature)


@dataclass(frozen=True)
class Calibration:
    """A verified calibration record: temperature, operating points and the uncertain band."""

    temperature: float
    operating_points: tuple[OperatingPoint, ...]
    fake_point: str  # the operating point above which the verdict is "fake"
    real_point: str  # the operating point at or below which the verdict is "real"
    fitted_on: dict  # model, data, split, images: where the record comes from
    sha256: str
    # The model id a record fitted on another (or no named) model was accepted for, by export's
    # --calibration or --attach --force; outside the hashed body, as it says where the record is used.
    accepted_for: str | None = None
    # maskclip-calibrate's check on held-out images: {"passed": bool, "problems": [...], ...}; None: not
    # checked (records written before the check existed, or made by hand). A failed one needs --force.
    check: dict | None = None

    def point(self, name: str) -> OperatingPoint:
        for op in self.operating_points:
            if op.name == name:
                return op
        raise CalibrationError(f"calibration record has no operating point {name!r}")

    @property
    def band(self) -> tuple[float, float]:
        """(real threshold, fake threshold) on the calibrated probability; between them: uncertain."""
        return self.point(self.real_point).threshold, self.point(self.fake_point).threshold

    def calibrate(self, prob) -> np.ndarray:
        return scale_probabilities(prob, self.temperature)

    def verdicts(self, calibrated_prob) -> np.ndarray:
        """Calibrated probabilities -> array of "real" / "uncertain" / "fake"."""
        low, high = self.band
        p = np.asarray(calibrated_prob, dtype=np.float64)
        return np.where(p > high, "fake", np.where(p <= low, "real", "uncertain"))

    def body(self) -> dict:
        """The record without its hash: what the sha256 covers."""
        return {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "method": "temperature",
            "temperature": self.temperature,
            "operating_points": [asdict(op) for op in self.operating_points],
            "verdict": {"fake_above": self.fake_point, "real_at_or_below": self.real_point},
            "fitted_on": self.fitted_on,
            **({} if self.check is None else {"check": self.check}),
        }

    def to_dict(self) -> dict:
        accepted = {} if self.accepted_for is None else {"accepted_for": self.accepted_for}
        return {**self.body(), "sha256": self.sha256, **accepted}

    def model_problem(self, model_id: str) -> str | None:
        """Why this record must not give model `model_id` its verdicts, or None (fitted on it or accepted for it)."""
        fitted = self.fitted_on.get("model_id")
        if model_id in (fitted, self.accepted_for):
            return None
        fitted = f"model {fitted}" if fitted else "a model it does not name (no model_id)"
        return f"the calibration record was fitted on {fitted}, not on {model_id}"

    @classmethod
    def create(
        cls,
        temperature: float,
        operating_points,
        fake_point: str,
        real_point: str,
        fitted_on: dict,
        check: dict | None = None,
    ) -> Calibration:
        """A new record; checks it and computes its hash."""
        draft = cls(
            float(temperature), tuple(operating_points), fake_point, real_point, dict(fitted_on), "", check=check
        )
        _check(draft)
        return cls(**{**draft.__dict__, "sha256": record_sha256(draft.body())})

    @classmethod
    def from_dict(cls, d: dict, where: str = "calibration record") -> Calibration:
        """Parse and verify a record (its format, its hash, its numbers); CalibrationError if unusable."""
        if not isinstance(d, dict) or d.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"{where}: not a MaskCLIP calibration record")
        if d.get("version") != CALIBRATION_VERSION:
            raise CalibrationError(f"{where}: unknown calibration record version {d.get('version')!r}")
        stated = str(d.get("sha256", ""))
        actual = record_sha256({k: v for k, v in d.items() if k not in ("sha256", "accepted_for")})
        if stated != actual:
            raise CalibrationError(f"{where}: tampered or corrupted calibration record (sha256 does not match)")
        try:
            verdict = d["verdict"]
            record = cls(
                temperature=float(d["temperature"]),
                operating_points=tuple(OperatingPoint.from_dict(op) for op in d["operating_points"]),
                fake_point=str(verdict["fake_above"]),
                real_point=str(verdict["real_at_or_below"]),
                fitted_on=dict(d.get("fitted_on", {})),
                sha256=stated,
                accepted_for=None if d.get("accepted_for") is None else str(d["accepted_for"]),
                check=None if d.get("check") is None else dict(d["check"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{where}: malformed calibration record ({type(exc).__name__}: {exc})") from None
        _check(record, where)
        return record


def _check(record: Calibration, where: str = "calibration record") -> None:
    if not (math.isfinite(record.temperature) and record.temperature > 0):
        raise CalibrationError(f"{where}: temperature must be a positive number, got {record.temperature}")
    if not record.operating_points:
        raise CalibrationError(f"{where}: no operating points")
    for op in record.operating_points:
        if not 0.0 <= op.threshold <= 1.0:
            raise CalibrationError(f"{where}: operating point {op.name} threshold {op.threshold} is outside [0, 1]")
    low, high = record.band  # also checks that both named points exist
    if low > high:
        raise CalibrationError(f"{where}: real threshold {low} lies above the fake threshold {high}")


def record_sha256(body: dict) -> str:
    """sha256 of a record's canonical JSON (sorted keys, no whitespace), so formatting does not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def read_calibration(path: str | os.PathLike) -> Calibration:
    """A calibration record file -> verified Calibration; CalibrationError (one line) when unusable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: unreadable calibration record ({exc})") from None
    return Calibration.from_dict(data, str(path))


def write_calibration(record: Calibration, path: str | os.PathLike) -> None:
    write_text_atomic(path, json.dumps(record.to_dict(), indent=2) + "\n")
