"""Every model card from one template: a title, what the model is for, and sections of paragraphs, bullet lists and
tables — every table rendered the same way, by pandas' ``to_markdown``.

Typical use::

    model_card("c360-churn", "Churn within 90 days of the as-of date.", {
        "Data": [["train: 1,000 examples", "test: 200 examples"]],  # a list of text: a bullet list
        "Test metrics": [metrics_frame],  # a DataFrame: a table
        "Caveats": ["Scores are calibrated on the period before the test.", None],  # text: a paragraph; None: left out
    })
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import pandas as pd

# a paragraph, a bullet list, a table; None and empty blocks are left out
Block: TypeAlias = str | list[str] | pd.DataFrame | None


def model_card(title: str, purpose: str, sections: Mapping[str, Sequence[Block]]) -> str:
    """The markdown card: ``# title``, the ``purpose`` paragraph, then one ``## heading`` per section with its
    blocks, separated by blank lines. A section without any block to show is left out."""
    parts = [f"# {title}", purpose.strip()]
    for heading, blocks in sections.items():
        shown = [_block(block) for block in blocks if not _empty(block)]
        if shown:
            parts += [f"## {heading}", *shown]
    return "\n\n".join(part for part in parts if part) + "\n"


def table(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown table (``DataFrame.to_markdown``). A named or labelled index is the first column;
    numbers are formatted by tabulate as pandas does, text cells are shown as given ("0.300" stays 0.300) with
    pipes and line breaks escaped."""
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None:
        frame = frame.rename_axis(frame.index.name or "").reset_index()
    frame = frame.set_axis([_cell(c) for c in frame.columns], axis=1)
    text = [i for i, column in enumerate(frame.columns) if not pd.api.types.is_numeric_dtype(frame.iloc[:, i])]
    frame = frame.astype({frame.columns[i]: object for i in text})
    for i in text:
        frame.isetitem(i, frame.iloc[:, i].map(_cell))
    return frame.to_markdown(index=False, disable_numparse=text or False)


def _block(block: str | list[str] | pd.DataFrame) -> str:
    if isinstance(block, pd.DataFrame):
        return table(block)
    if isinstance(block, list):
        return "\n".join(f"- {item}" for item in block)
    return block.strip()


def _empty(block: Block) -> bool:
    if block is None:
        return True
    return block.empty if isinstance(block, pd.DataFrame) else not block


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
