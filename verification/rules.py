"""The benchmark's declarative log rules (logging/dlrm_rules.yaml)."""

from __future__ import annotations

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES_FILE = os.path.join(ROOT, "logging", "dlrm_rules.yaml")


def load_rules(path: str = RULES_FILE) -> dict:
    with open(path) as f:
        rules = yaml.safe_load(f)
    rules["closed_division"]["reference_config"] = os.path.join(ROOT, rules["closed_division"]["reference_config"])
    return rules
