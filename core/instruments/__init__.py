"""Validated questionnaires (PHQ-9, GAD-7, K6, WHO-5, PCL-5 …) as data files, and their scoring."""

from core.instruments.cli import cli_list, cli_score
from core.instruments.instrument import (
    Audience,
    Band,
    BandText,
    Instrument,
    InstrumentError,
    InstrumentTexts,
    Item,
    ItemText,
    Option,
    OptionText,
    Score,
    Scoring,
    Translation,
)
from core.instruments.registry import InstrumentRegistry, age_band_minimum, bundled_dir
from core.instruments.rules import RULE_TYPES, Rule

__all__ = [
    "RULE_TYPES",
    "Audience",
    "Band",
    "BandText",
    "Instrument",
    "InstrumentError",
    "InstrumentRegistry",
    "InstrumentTexts",
    "Item",
    "ItemText",
    "Option",
    "OptionText",
    "Rule",
    "Score",
    "Scoring",
    "Translation",
    "age_band_minimum",
    "bundled_dir",
    "cli_list",
    "cli_score",
]
