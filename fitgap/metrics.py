"""Detection metrics per subset: accuracy at 0.5, real/fake accuracy, AP (fake positive)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np


def subset_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> Dict[str, Optional[float]]:
    """labels: 0 real / 1 fake; scores: P(fake). A value that cannot be defined (AP without both
    classes, real accuracy without real images) is None, with the reason in `notes`."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    pred = s > threshold
    notes = []
    out: Dict[str, Optional[float]] = {"n": int(len(y)), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}
    out["acc"] = float((pred == (y == 1)).mean()) if len(y) else None
    out["real_acc"] = float((~pred[y == 0]).mean()) if (y == 0).any() else None
    out["fake_acc"] = float(pred[y == 1].mean()) if (y == 1).any() else None
    if (y == 0).any() and (y == 1).any():
        out["ap"] = float(average_precision_score(y, s))
    else:
        out["ap"] = None
        notes.append("AP undefined: only one class")
    if not len(y):
        notes.append("no images")
    out["notes"] = "; ".join(notes)
    return out


def mean_row(rows: List[Dict[str, object]], keys=("acc", "real_acc", "fake_acc", "ap")) -> Dict[str, object]:
    """Unweighted mean over the subsets where a value is defined; says how many were used."""
    out: Dict[str, object] = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
        out[k] = float(np.mean(vals)) if vals else None
        out[f"{k}_subsets"] = len(vals)
    return out
