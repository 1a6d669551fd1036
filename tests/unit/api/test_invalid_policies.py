"""The models reject every invalid manifest of the shared table, naming the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from polca.api.powerpolicy import PowerPolicySpec

CASES_FILE = Path(__file__).with_name("invalid_policies.yaml")
CASES: list[dict[str, Any]] = yaml.safe_load(CASES_FILE.read_text())


def leaf(field_path: str) -> str:
    """`spec.stages[1].releasePercent` → `releasePercent`; `spec.stages[2]` → `stages`."""
    return re.sub(r"\[\d+\]$", "", field_path.rsplit(".", 1)[-1])


def test_the_table_is_large_and_ids_are_unique() -> None:
    ids = [case["id"] for case in CASES]
    assert len(ids) >= 15
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_model_rejects_and_names_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        PowerPolicySpec.model_validate(case["spec"])
    text = str(caught.value)
    for word in (leaf(case["field"]), *case.get("mentions", ())):
        assert word in text, f"{case['id']}: {word!r} not in {text}"
