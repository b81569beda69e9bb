"""From logits to a verdict a person can act on: temperature scaling and a three-way verdict.

A detector's P(fake) = sigmoid(logit) is rarely calibrated on new data. Fitted on a labelled
validation set (never the set being judged):

- a temperature T for the logits, P(fake) = sigmoid(logit / T), minimising the negative log-likelihood
  (one parameter, a convex 1-D problem: a bracketed golden-section search on log T, exact to 1e-6);
- two thresholds on the calibrated P(fake): `fake` at or above t_fake, chosen so that at most the
  target share of the real images (default 1%) reaches it; `real` at or below t_real, chosen so that at
  most the target share of the fakes (default 5%) falls to it; `unsure` between.

The fitted values travel with the checkpoint as calibration.json, naming the set they were fitted on,
the targets and what they reached there.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .errors import InputError, MissingInput

VERDICTS = ("real", "unsure", "fake")
DEFAULT_FPR = 0.01  # share of real images called fake
DEFAULT_FNR = 0.05  # share of fakes called real


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def nll(labels: Sequence[int], logits: Sequence[float], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of the labels under sigmoid(logit / T)."""
    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64) / temperature
    # log(1 + e^z) - y z, computed stably
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def balanced_nll(labels: Sequence[int], logits: Sequence[float], temperature: float = 1.0) -> Optional[float]:
    """The mean of the per-class NLLs (nats): equal weight to reals and fakes whatever their counts."""
    y = np.asarray(labels)
    z = np.asarray(logits, dtype=np.float64) / temperature
    if not ((y == 0).any() and (y == 1).any()):
        return None
    return float(0.5 * (np.mean(np.logaddexp(0.0, -z[y == 1])) + np.mean(np.logaddexp(0.0, z[y == 0]))))


def cllr(labels: Sequence[int], logits: Sequence[float], temperature: float = 1.0) -> Optional[float]:
    """Cllr, the forensic-evidence cost of log-likelihood ratios (bits): the balanced NLL in base 2, with
    the logit read as the natural log of the likelihood ratio (equal priors). 1.0 is an uninformative
    system, 0 a perfect one; above 1 the scores mislead."""
    b = balanced_nll(labels, logits, temperature)
    return None if b is None else b / math.log(2.0)


def fit_temperature(labels: Sequence[int], logits: Sequence[float], lo: float = 1e-2, hi: float = 1e2,
                    tol: float = 1e-6) -> float:
    """The T in [lo, hi] that minimises nll(labels, logits, T) (golden-section search on log T; the NLL of
    a temperature-scaled logistic model is unimodal in 1/T)."""
    y, z = np.asarray(labels), np.asarray(logits, dtype=np.float64)
    if len(y) == 0 or not ((y == 0).any() and (y == 1).any()):
        raise ValueError("temperature: the calibration set needs real and fake images")
    f = lambda log_t: nll(y, z, math.exp(log_t))  # noqa: E731
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2)


def fit_thresholds(labels: Sequence[int], probs: Sequence[float], fpr: float = DEFAULT_FPR,
                   fnr: float = DEFAULT_FNR) -> Dict[str, float]:
    """t_fake: the lowest threshold with at most floor(fpr * n_real) real images at or above it; t_real:
    the highest with at most floor(fnr * n_fake) fakes at or below it (both reached exactly on these
    scores, ties counted against the target)."""
    y, p = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    real, fake = np.sort(p[y == 0])[::-1], np.sort(p[y == 1])
    if not len(real) or not len(fake):
        raise ValueError("thresholds: the calibration set needs real and fake images")
    if not (0 <= fpr < 1 and 0 <= fnr < 1):
        raise ValueError(f"targets must be in [0, 1): fpr {fpr}, fnr {fnr}")
    k = int(math.floor(fpr * len(real) + 1e-9))  # real images allowed at or above t_fake
    t_fake = float(np.nextafter(real[k], np.inf)) if k < len(real) else float(real[-1])
    m = int(math.floor(fnr * len(fake) + 1e-9))  # fakes allowed at or below t_real
    t_real = float(np.nextafter(fake[m], -np.inf)) if m < len(fake) else float(fake[-1])
    return {"fake": min(t_fake, 1.0), "real": max(t_real, 0.0)}


def verdict(prob: Optional[float], thresholds: Dict[str, float]) -> Optional[str]:
    """fake at or above thresholds["fake"], real at or below thresholds["real"], unsure between (and
    whenever the two overlap: a set on which no threshold pair meets both targets decides nothing there)."""
    if prob is None or not math.isfinite(prob):
        return None
    if prob >= thresholds["fake"] and prob > thresholds["real"]:
        return "fake"
    if prob <= thresholds["real"] and prob < thresholds["fake"]:
        return "real"
    return "unsure"


def verdict_shares(labels: Sequence[int], probs: Sequence[float], thresholds: Dict[str, float]
                   ) -> Dict[str, Any]:
    """Per class, the share of each verdict; and the accuracy on the images that were decided."""
    y, p = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    v = np.array([verdict(float(x), thresholds) for x in p])
    out: Dict[str, Any] = {}
    for name, cls in (("real", 0), ("fake", 1)):
        m = y == cls
        out[name] = {k: (float((v[m] == k).mean()) if m.any() else None) for k in VERDICTS}
    decided = v != "unsure"
    right = ((v == "fake") & (y == 1)) | ((v == "real") & (y == 0))
    out["decided"] = float(decided.mean()) if len(v) else None
    out["acc_decided"] = float(right[decided].mean()) if decided.any() else None
    return out


def file_ids(paths: Iterable[str]) -> List[str]:
    """A short fingerprint of every file path (first 16 hex digits of SHA-1 of the absolute path), sorted:
    enough to tell whether two sets share files without storing the paths."""
    return sorted({hashlib.sha1(os.path.abspath(p).encode("utf-8", "surrogateescape")).hexdigest()[:16]
                   for p in paths})


def load_calibration(path: str) -> Dict[str, Any]:
    """A calibration.json, checked for the fields a verdict needs."""
    if not os.path.isfile(path):
        raise MissingInput(f"--calibration: {path!r} does not exist (fit one with python -m fitgap.calibrate)")
    try:
        with open(path) as f:
            doc = json.load(f)
        t = float(doc["temperature"])
        th = {"fake": float(doc["thresholds"]["fake"]), "real": float(doc["thresholds"]["real"])}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--calibration: {path} is not a calibration file ({type(exc).__name__}: {exc})") from None
    if not (t > 0 and all(0 <= v <= 1 for v in th.values())):
        raise InputError(f"--calibration: {path}: temperature {t} or thresholds {th} out of range")
    return doc


def find_calibration(arg: Optional[str], beside: str) -> Optional[Dict[str, Any]]:
    if arg is not None:
        return None if arg.lower() == "none" else load_calibration(arg)
    path = os.path.join(os.path.dirname(os.path.abspath(beside)), "calibration.json")
    return load_calibration(path) if os.path.isfile(path) else None
