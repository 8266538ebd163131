"""`loraboost demo --quick` on the real embedded default (SmolLM2-135M, movie-review sentiment), as CI
runs it: it completes offline and fine-tuning beats the untuned model."""

import json

import pytest

from loraboost.cli import main

pytestmark = pytest.mark.real


def test_quick_demo_on_the_embedded_default_beats_the_base_model(tmp_path):
    assert main(["demo", "--quick", "--output", str(tmp_path)]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "compare.json").read_text())["rows"]}
    assert list(rows)[0] == "base (untuned)" and {"lora", "cola"} <= set(rows)
    base = rows["base (untuned)"]["mean"]
    # On 100 test examples one standard error is about 0.05: a gain of 0.1 is well outside noise.
    assert rows["lora"]["mean"] > base + 0.1 and rows["cola"]["mean"] > base + 0.1
    assert (tmp_path / "compare.png").stat().st_size > 10_000
