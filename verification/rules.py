"""The benchmarks' declarative log rules (logging/<benchmark>_rules.yaml), per round.

MLPerf Training had ``dlrm`` in rounds 0.7.0 - 2.1.0 and ``dlrm_dcnv2`` from
3.0.0 on (the official checker knows each benchmark only in its own rounds), so
a round names its benchmark.
"""

from __future__ import annotations

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = {
    "dlrm": ("0.7.0", "1.0.0", "1.1.0", "2.0.0", "2.1.0"),
    "dlrm_dcnv2": ("3.0.0", "3.1.0", "4.0.0", "4.1.0", "5.0.0", "5.1.0", "6.0.0"),
}
RULESETS = tuple(r for rounds in ROUNDS.values() for r in rounds)
DEFAULT_RULESET = "2.1.0"


def benchmark_of(ruleset: str) -> str:
    for benchmark, rounds in ROUNDS.items():
        if ruleset in rounds:
            return benchmark
    raise ValueError(f"ruleset {ruleset!r}: DLRM was benchmarked under {', '.join(RULESETS)}")


def default_ruleset(benchmark: str | None) -> str:
    """The latest round of ``benchmark`` (DEFAULT_RULESET for a benchmark of neither generation)."""
    return ROUNDS[benchmark][-1] if benchmark in ROUNDS else DEFAULT_RULESET


def rules_file(benchmark: str) -> str:
    return os.path.join(ROOT, "logging", f"{benchmark}_rules.yaml")


def refusal(benchmark, ruleset: str) -> str | None:
    """Why a log of ``benchmark`` cannot be checked under ``ruleset``, or None when it can."""
    expected = benchmark_of(ruleset)
    if benchmark == expected:
        return None
    rounds = ROUNDS.get(benchmark)
    where = (f"{benchmark} was benchmarked in training {rounds[0]} - {rounds[-1]}: check it with --ruleset "
             f"{rounds[-1]} (or another of its rounds)") if rounds else \
        f"this verifier knows {', '.join(ROUNDS)}"
    return (f"submission_benchmark {benchmark!r} under training {ruleset}, whose recommendation benchmark is "
            f"{expected} (its official checker has no rules for {benchmark!r} and fails); {where}")


def load_rules(ruleset: str = DEFAULT_RULESET, path: str | None = None) -> dict:
    """The common rules of the round's benchmark with the round's overrides;
    ``rules["ruleset"]`` names the round, ``rules["benchmark"]`` its benchmark."""
    benchmark = benchmark_of(ruleset)
    path = path or rules_file(benchmark)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if data.get("benchmark") != benchmark:
        raise ValueError(f"{path}: rules of {data.get('benchmark')!r}, training {ruleset} needs {benchmark}'s")
    rules = dict(data["common"])
    rules.update((data.get("rounds") or {}).get(ruleset) or {})
    rules["ruleset"], rules["benchmark"] = ruleset, benchmark
    rules["closed_division"] = dict(rules["closed_division"])
    rules["closed_division"]["reference_config"] = os.path.join(ROOT, rules["closed_division"]["reference_config"])
    return rules
