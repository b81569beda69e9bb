"""Detection metrics per subset (real = 0, fake = 1, score = P(fake)).

At the 0.5 threshold: accuracy, real accuracy, fake accuracy, balanced accuracy. Threshold-free: AP
(fake positive), ROC AUC, EER, TPR at 1% and 5% FPR (scikit-learn's curves). Calibration: ECE of
P(fake) over equal-width bins (|fraction fake - mean P(fake)| weighted by the bin's share). With a
threshold fitted elsewhere (a validation split), the same accuracies at that threshold.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ECE_BINS = 10


def _accuracies(y: np.ndarray, s: np.ndarray, threshold: float) -> Dict[str, Optional[float]]:
    pred = s > threshold
    real = float((~pred[y == 0]).mean()) if (y == 0).any() else None
    fake = float(pred[y == 1].mean()) if (y == 1).any() else None
    return {"acc": float((pred == (y == 1)).mean()) if len(y) else None, "real_acc": real, "fake_acc": fake,
            "bal_acc": (real + fake) / 2 if real is not None and fake is not None else None}


def eer(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Equal error rate: where the ROC's false positive rate meets its false negative rate (linear
    interpolation between the two ROC points that bracket the crossing)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    i = int(np.argmax(fnr <= fpr))  # first point at or past the crossing (fnr falls, fpr rises)
    if i == 0:
        return float(fpr[0])
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(labels: Sequence[int], scores: Sequence[float], target: float) -> float:
    """The highest true positive rate among thresholds whose false positive rate is <= target."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def calibration_bins(labels: Sequence[int], scores: Sequence[float], bins: int = ECE_BINS
                     ) -> List[Dict[str, float]]:
    """Reliability-diagram bins of P(fake): [lo, hi), the last bin closed; empty bins omitted."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    idx = np.minimum((s * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(m.sum()),
                        "mean_p": float(s[m].mean()), "frac_fake": float(y[m].mean())})
    return out


def ece(labels: Sequence[int], scores: Sequence[float], bins: int = ECE_BINS) -> float:
    n = len(labels)
    return float(sum(b["n"] / n * abs(b["frac_fake"] - b["mean_p"]) for b in calibration_bins(labels, scores, bins)))


def fit_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """The threshold (predict fake when score > t) with the best balanced accuracy on these scores;
    ties go to the threshold nearest 0.5. Candidates are midpoints between distinct scores."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if not ((y == 0).any() and (y == 1).any()):
        raise ValueError("fitting a threshold needs real and fake images")
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1]]]) if len(u) > 1 else np.array([u[0]])
    best: Tuple[float, float, float] = (-1.0, 0.0, 0.0)
    for t in cands:
        pred = s > t
        bal = ((~pred[y == 0]).mean() + pred[y == 1].mean()) / 2
        key = (bal, -abs(t - 0.5), t)
        if key[:2] > best[:2]:
            best = key
    return float(best[2])


def subset_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5,
                   fitted_threshold: Optional[float] = None) -> Dict[str, Optional[float]]:
    """labels: 0 real / 1 fake; scores: P(fake). A value that cannot be defined (AP without both
    classes, real accuracy without real images) is None, with the reason in `notes`."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    notes = []
    out: Dict[str, Optional[float]] = {"n": int(len(y)), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}
    out.update(_accuracies(y, s, threshold))
    both = bool((y == 0).any() and (y == 1).any())
    out["ap"] = float(average_precision_score(y, s)) if both else None
    out["auc"] = float(roc_auc_score(y, s)) if both else None
    out["eer"] = eer(y, s) if both else None
    out["tpr_at_fpr1"] = tpr_at_fpr(y, s, 0.01) if both else None
    out["tpr_at_fpr5"] = tpr_at_fpr(y, s, 0.05) if both else None
    out["ece"] = ece(y, s) if len(y) else None
    if not both:
        notes.append("AP undefined: only one class")
    if fitted_threshold is not None:
        out["threshold"] = float(fitted_threshold)
        out.update({f"{k}_t": v for k, v in _accuracies(y, s, fitted_threshold).items()})
    if not len(y):
        notes.append("no images")
    out["notes"] = "; ".join(notes)
    return out


METRIC_KEYS = ("acc", "real_acc", "fake_acc", "bal_acc", "ap", "auc", "eer", "tpr_at_fpr1", "tpr_at_fpr5",
               "ece", "acc_t", "real_acc_t", "fake_acc_t", "bal_acc_t")


def mean_row(rows: List[Dict[str, object]], keys=METRIC_KEYS) -> Dict[str, object]:
    """Unweighted mean over the subsets where a value is defined; says how many were used."""
    out: Dict[str, object] = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
        out[k] = float(np.mean(vals)) if vals else None
        out[f"{k}_subsets"] = len(vals)
    return out
