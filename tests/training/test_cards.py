"""The one model-card template: title, purpose, sections of paragraphs, bullet lists and to_markdown tables."""

from __future__ import annotations

import pandas as pd

from c360.training.cards import model_card, table


def test_a_card_has_its_title_purpose_and_sections_in_order():
    metrics = pd.DataFrame({"roc_auc": [0.81234, 0.7]}, index=pd.Index(["lightgbm", "logistic"], name="model"))
    card = model_card("c360-churn", "Churn within 90 days.", {
        "Data": [["train: 1,000 examples", "test: 200 examples"]],
        "Test metrics": [metrics, "Mean trees per fold: 40."],
        "Exact values": [None, pd.DataFrame()],  # nothing to show: the section is left out
        "Caveats": [["Not a time split."]],
    })
    assert card == """# c360-churn

Churn within 90 days.

## Data

- train: 1,000 examples
- test: 200 examples

## Test metrics

| model    |   roc_auc |
|:---------|----------:|
| lightgbm |   0.81234 |
| logistic |   0.7     |

Mean trees per fold: 40.

## Caveats

- Not a time split.
"""


def test_tables_keep_text_as_written_and_escape_pipes():
    frame = pd.DataFrame({"value [CI]": ["0.300 [0.1, 0.5]", "0.300"], "a|b": ["x|y", "line\nbreak"]})
    lines = table(frame).splitlines()
    assert lines[0].split("|")[1].strip() == "value [CI]" and "a\\|b" in lines[0]
    assert "0.300" in lines[3] and "x\\|y" in lines[2] and "line break" in lines[3]
    assert len(lines) == 4  # header, rule, two rows: no index column for a plain RangeIndex
