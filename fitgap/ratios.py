"""Rescaling ratios src/dst = p/q from the YAML: an explicit list or a range with a max denominator.

    ratios: {list: ["3/2", "4/3", "5/4"]}
    ratios: {range: [1.0, 2.0], max_denominator: 8}     # every reduced fraction strictly inside

Ratios above 1 shrink, below 1 enlarge. A ratio with q = 1 (1, 2, 3, ...) has a single phase, so it
cannot give the same-image hard negatives the task needs: it is refused, and so are duplicates
(3/2 and 6/4 are the same ratio).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence

from .config import ConfigError


def parse_fraction(text: Any, key: str = "ratios.list") -> Fraction:
    try:
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            f = Fraction(text).limit_denominator(1024)
        else:
            f = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{key}: {text!r} is not a fraction like \"3/2\"") from None
    if f <= 0:
        raise ConfigError(f"{key}: ratio {text!r} must be positive")
    return f


def ratios_from_config(spec: Dict[str, Any]) -> List[Fraction]:
    """The sorted list of ratios named by a `ratios:` block."""
    listed: Optional[Sequence] = spec.get("list")
    rng: Optional[Sequence] = spec.get("range")
    qmax = spec.get("max_denominator")
    if (listed is None) == (rng is None):
        raise ConfigError("ratios: give exactly one of ratios.list or ratios.range")
    if listed is not None:
        out, seen = [], {}
        for item in listed:
            f = parse_fraction(item)
            if f in seen:
                raise ConfigError(f"ratios.list: {item!r} duplicates {seen[f]!r} (both are {f})")
            seen[f] = item
            out.append(f)
    else:
        if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
            raise ConfigError(f"ratios.range: expected [low, high], got {rng!r}")
        lo, hi = (parse_fraction(v, "ratios.range") for v in rng)
        if not lo < hi:
            raise ConfigError(f"ratios.range: low {rng[0]} must be below high {rng[1]}")
        if not isinstance(qmax, int) or qmax < 2:
            raise ConfigError(f"ratios.max_denominator: expected an integer >= 2, got {qmax!r}")
        out = sorted({Fraction(p, q) for q in range(2, qmax + 1)
                      for p in range(int(lo * q), int(hi * q) + 2) if lo < Fraction(p, q) < hi})
        out = [f for f in out if f.denominator > 1]
    for f in out:
        if f.denominator == 1:
            raise ConfigError(f"ratios: {f} has denominator 1, so a single phase; it cannot give "
                              "same-image hard negatives (use e.g. 3/2 or 5/4)")
        if f.denominator > 1024 or f.numerator > 1 << 20:
            raise ConfigError(f"ratios: {f} is too fine (denominator must be <= 1024)")
    if not out:
        raise ConfigError("ratios: the ratio set is empty")
    return sorted(out)


def format_ratio(f: Fraction) -> str:
    return f"{f.numerator}/{f.denominator}"
