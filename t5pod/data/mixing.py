"""Mixing rates (paper §3.5.2): examples-proportional with limit K and temperature T, equal."""

from typing import Mapping


def examples_proportional_rates(
    num_examples: Mapping[str, int], limit: float | None = None, temperature: float = 1.0, scale: float = 1.0
) -> dict[str, float]:
    """rate_m = min(scale * n_m, K) ** (1 / T); seqio normalises the rates into probabilities.

    T = 1 without a limit is plain examples-proportional mixing; large T approaches equal mixing.
    Tasks with n_m = 0 (evaluation-only members) get rate 0.
    """
    if temperature <= 0:
        raise ValueError(f"MIXING_TEMPERATURE must be positive, got {temperature}.")
    if limit is not None and limit <= 0:
        raise ValueError(f"MIXING_RATE_LIMIT must be positive, got {limit}.")
    rates = {}
    for name, n in num_examples.items():
        size = scale * n if limit is None else min(scale * n, limit)
        rates[name] = float(size) ** (1.0 / temperature) if size > 0 else 0.0
    return rates


def equal_rates(num_examples: Mapping[str, int]) -> dict[str, float]:
    return {name: 1.0 if n > 0 else 0.0 for name, n in num_examples.items()}


def probabilities(rates: Mapping[str, float]) -> dict[str, float]:
    total = sum(rates.values())
    return {name: rate / total for name, rate in rates.items()}
