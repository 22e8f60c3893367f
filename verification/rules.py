"""The benchmark's declarative log rules (logging/dlrm_rules.yaml), per round."""

from __future__ import annotations

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES_FILE = os.path.join(ROOT, "logging", "dlrm_rules.yaml")
# The rounds that had the original DLRM (training 3.0.0 on only know dlrm_dcnv2).
RULESETS = ("0.7.0", "1.0.0", "1.1.0", "2.0.0", "2.1.0")
DEFAULT_RULESET = "2.1.0"


def load_rules(ruleset: str = DEFAULT_RULESET, path: str = RULES_FILE) -> dict:
    """The common rules with the round's overrides; ``rules["ruleset"]`` names the round."""
    if ruleset not in RULESETS:
        raise ValueError(f"ruleset {ruleset!r}: DLRM was benchmarked under {', '.join(RULESETS)}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    rules = dict(data["common"])
    rules.update((data.get("rounds") or {}).get(ruleset) or {})
    rules["ruleset"] = ruleset
    rules["closed_division"] = dict(rules["closed_division"])
    rules["closed_division"]["reference_config"] = os.path.join(ROOT, rules["closed_division"]["reference_config"])
    return rules
