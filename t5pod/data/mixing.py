"""Mixing rates (paper §3.5.2): examples-proportional with limit K and temperature T, equal."""

import math
from typing import Mapping


def examples_proportional_rates(
    num_examples: Mapping[str, int], limit: float | None = None, temperature: float = 1.0, scale: float = 1.0
) -> dict[str, float]:
    """rate_m = min(scale * n_m, K) ** (1 / T); seqio normalises the rates into probabilities.

    T = 1 without a limit is plain examples-proportional mixing; large T approaches equal mixing,
    small T gives the largest task everything. Where the rates overflow or all underflow a float
    (T near 0), they are computed in logarithms and divided by the largest, which leaves the mixture
    unchanged (only ratios matter). Tasks with n_m = 0 (evaluation-only members) get rate 0.
    """
    if not temperature > 0:  # NaN fails too
        raise ValueError(f"MIXING_TEMPERATURE must be positive, got {temperature}.")
    if limit is not None and not limit > 0:
        raise ValueError(f"MIXING_RATE_LIMIT must be positive (or None: no limit), got {limit}.")
    sizes = {name: scale * n if limit is None else min(scale * n, limit) for name, n in num_examples.items()}
    try:
        rates = {name: float(size) ** (1.0 / temperature) if size > 0 else 0.0 for name, size in sizes.items()}
        if not any(sizes.values()) or max(rates.values()) > 0:
            return rates
    except OverflowError:
        pass
    logs = {name: math.log(size) / temperature for name, size in sizes.items() if size > 0}
    top = max(logs.values())
    return {name: math.exp(logs[name] - top) if name in logs else 0.0 for name in sizes}


def equal_rates(num_examples: Mapping[str, int]) -> dict[str, float]:
    return {name: 1.0 if n > 0 else 0.0 for name, n in num_examples.items()}


def probabilities(rates: Mapping[str, float]) -> dict[str, float]:
    total = sum(rates.values())
    return {name: rate / total for name, rate in rates.items()}
