"""Instruments: bundled data against CLINICAL.md, scoring rules, loader refusals and CLI."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from core.instruments import (
    Instrument,
    InstrumentError,
    InstrumentRegistry,
    bundled_dir,
    cli_list,
    cli_score,
)
from core.risk import RiskLevel, RiskSignal

# Published bands, written out from /work/shared/CLINICAL.md, NOT read from the data files.
# (instrument, items, highest value per item, [(band id, min, max), ...])
PUBLISHED = {
    "phq9": (9, 3, [("minimal", 0, 4), ("mild", 5, 9), ("moderate", 10, 14),
                    ("moderately_severe", 15, 19), ("severe", 20, 27)]),
    "phq2": (2, 3, [("negative", 0, 2), ("positive", 3, 6)]),
    "gad7": (7, 3, [("minimal", 0, 4), ("mild", 5, 9), ("moderate", 10, 14), ("severe", 15, 21)]),
    "gad2": (2, 3, [("negative", 0, 2), ("positive", 3, 6)]),
    "k6": (6, 4, [("low", 0, 4), ("moderate", 5, 12), ("serious", 13, 24)]),
    # WHO-5 raw 0–25: ≤ 28 % (raw ≤ 7) likely depression; raw < 13 poor well-being.
    "who5": (5, 5, [("likely_depression", 0, 7), ("poor", 8, 12), ("adequate", 13, 25)]),
    # PCL-5 has no published severity bands: one band over 0–80.
    "pcl5": (20, 4, [("total", 0, 80)]),
}  # fmt: skip

BOUNDARIES = [
    pytest.param(instrument_id, total, band_id, id=f"{instrument_id}-{total}-{band_id}")
    for instrument_id, (_, _, bands) in PUBLISHED.items()
    for band_id, low, high in bands
    for total in sorted({low, high})
]


@pytest.fixture(scope="module")
def registry() -> InstrumentRegistry:
    return InstrumentRegistry.load([bundled_dir()])


def answers_for(instrument_id: str, total: int) -> list[int]:
    """Spread a total over the items from the first one on, each up to its highest value."""
    count, highest, _ = PUBLISHED[instrument_id]
    answers = []
    for _ in range(count):
        value = min(highest, total)
        answers.append(value)
        total -= value
    assert total == 0
    return answers


def reasons(signals: tuple[RiskSignal, ...]) -> dict[tuple[str, ...], RiskLevel]:
    return {signal.reasons: signal.level for signal in signals}


# -- bundled data against the published cut-offs ---------------------------------------------


def test_bundled_registry_holds_exactly_the_seven_instruments(registry: InstrumentRegistry) -> None:
    assert sorted(i.id for i in registry) == sorted(PUBLISHED)


@pytest.mark.parametrize("instrument_id", sorted(PUBLISHED))
def test_item_count_matches_the_published_instrument(
    registry: InstrumentRegistry, instrument_id: str
) -> None:
    count, highest, _ = PUBLISHED[instrument_id]
    instrument = registry.get(instrument_id)
    assert len(instrument.items) == count
    assert instrument.total_range == (0, count * highest)


@pytest.mark.parametrize(("instrument_id", "total", "band"), BOUNDARIES)
def test_total_on_a_published_boundary_falls_in_the_published_band(
    registry: InstrumentRegistry, instrument_id: str, total: int, band: str
) -> None:
    score = registry.get(instrument_id).score(answers_for(instrument_id, total))
    assert (score.total, score.band) == (total, band)


@pytest.mark.parametrize(
    ("first", "second"), [("phq9", "phq2"), ("gad7", "gad2")], ids=["phq2", "gad2"]
)
def test_two_item_screener_uses_the_first_two_items_of_the_full_instrument(
    registry: InstrumentRegistry, first: str, second: str
) -> None:
    full, short = registry.get(first), registry.get(second)
    for lang in ("zh_Hans", "en"):
        assert [i.text for i in short.texts(lang).items] == [
            i.text for i in full.texts(lang).items[:2]
        ]


# -- special rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "percent"), [(0, 0), (7, 28), (12, 48), (13, 52), (25, 100)])
def test_who5_scaled_score_is_raw_times_four(
    registry: InstrumentRegistry, raw: int, percent: int
) -> None:
    assert registry.get("who5").score(answers_for("who5", raw)).scaled == percent


def test_instrument_without_multiplier_has_no_scaled_score(registry: InstrumentRegistry) -> None:
    assert registry.get("phq9").score([0] * 9).scaled is None


@pytest.mark.parametrize(("raw", "flagged"), [(12, True), (13, False)])
def test_who5_raw_below_13_flags_poor_wellbeing_and_offers_phq9(
    registry: InstrumentRegistry, raw: int, flagged: bool
) -> None:
    score = registry.get("who5").score(answers_for("who5", raw))
    assert ("poor_wellbeing" in score.flags) is flagged
    assert (score.offers == ("phq9",)) is flagged


@pytest.mark.parametrize(("raw", "flagged"), [(7, True), (8, False)])
def test_who5_percent_at_most_28_flags_likely_depression(
    registry: InstrumentRegistry, raw: int, flagged: bool
) -> None:
    score = registry.get("who5").score(answers_for("who5", raw))
    assert ("likely_depression" in score.flags) is flagged


@pytest.mark.parametrize(
    ("item9", "level"),
    [(0, None), (1, RiskLevel.MODERATE), (2, RiskLevel.HIGH), (3, RiskLevel.HIGH)],
)
def test_phq9_item9_raises_a_risk_signal_whatever_the_total(
    registry: InstrumentRegistry, item9: int, level: RiskLevel | None
) -> None:
    score = registry.get("phq9").score([0] * 8 + [item9])
    assert score.band == "minimal"
    assert reasons(score.signals).get(("phq9.item9",)) == level
    assert all(s.source == "instrument" for s in score.signals)


@pytest.mark.parametrize(("total", "signalled"), [(19, False), (20, True)])
def test_phq9_total_of_20_or_more_is_a_high_risk_signal(
    registry: InstrumentRegistry, total: int, signalled: bool
) -> None:
    answers = answers_for("phq9", total)
    assert answers[8] == 0  # item 9 stays out of it
    score = registry.get("phq9").score(answers)
    expected = {("phq9.severe",): RiskLevel.HIGH} if signalled else {}
    assert reasons(score.signals) == expected


@pytest.mark.parametrize(("total", "signalled"), [(12, False), (13, True)])
def test_k6_total_of_13_or_more_is_a_high_risk_signal(
    registry: InstrumentRegistry, total: int, signalled: bool
) -> None:
    score = registry.get("k6").score(answers_for("k6", total))
    expected = {("k6.serious_distress",): RiskLevel.HIGH} if signalled else {}
    assert reasons(score.signals) == expected


@pytest.mark.parametrize(
    ("instrument_id", "offer"), [("phq2", "phq9"), ("gad2", "gad7")], ids=["phq2", "gad2"]
)
@pytest.mark.parametrize(("total", "positive"), [(2, False), (3, True)])
def test_two_item_screener_of_3_or_more_is_positive_and_offers_the_full_instrument(
    registry: InstrumentRegistry, instrument_id: str, offer: str, total: int, positive: bool
) -> None:
    score = registry.get(instrument_id).score(answers_for(instrument_id, total))
    assert score.flags == (("positive", f"offer:{offer}") if positive else ())


@pytest.mark.parametrize(("total", "flagged"), [(32, False), (33, True)])
def test_pcl5_total_at_the_default_cutoff_33_flags_probable_ptsd(
    registry: InstrumentRegistry, total: int, flagged: bool
) -> None:
    score = registry.get("pcl5").score(answers_for("pcl5", total))
    assert ("probable_ptsd" in score.flags) is flagged


def test_pcl5_cutoff_can_be_lowered_by_a_deployment_threshold() -> None:
    registry = InstrumentRegistry.load([bundled_dir()], thresholds={"pcl5.probable_ptsd": 31})
    assert "probable_ptsd" in registry.get("pcl5").score(answers_for("pcl5", 31)).flags
    assert "probable_ptsd" not in registry.get("pcl5").score(answers_for("pcl5", 30)).flags


def test_threshold_override_for_an_unknown_rule_is_refused() -> None:
    with pytest.raises(InstrumentError, match=r"pcl5\.no_such_rule"):
        InstrumentRegistry.load([bundled_dir()], thresholds={"pcl5.no_such_rule": 31})


def test_score_keeps_instrument_version_and_answers(registry: InstrumentRegistry) -> None:
    score = registry.get("gad2").score([1, 2])
    assert (score.instrument, score.version, score.answers) == ("gad2", "1.0", (1, 2))


# -- invalid answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ([0] * 8, "needs 9 answers"),
        ([0] * 10, "needs 9 answers"),
        ([0] * 8 + [4], "Answer 9 of phq9 is 4"),
        ([-1] + [0] * 8, "Answer 1 of phq9 is -1"),
        ([True] + [0] * 8, "Answer 1 of phq9 is True"),
    ],
    ids=["too-few", "too-many", "above-range", "below-range", "not-an-int"],
)
def test_invalid_answers_are_refused_with_one_sentence(
    registry: InstrumentRegistry, answers: list[int], message: str
) -> None:
    with pytest.raises(InstrumentError, match=message) as caught:
        registry.get("phq9").score(answers)
    assert str(caught.value).endswith(".") and "\n" not in str(caught.value)


# -- texts and audience --------------------------------------------------------------------


def test_texts_give_the_chat_flow_everything_in_one_language(
    registry: InstrumentRegistry,
) -> None:
    texts = registry.get("phq9").texts("zh_Hans")
    assert texts.timeframe == "过去两周"
    assert texts.items[0].text == "做事时提不起劲或没有兴趣"
    assert [o.label for o in texts.items[0].options] == [
        "完全不会",
        "好几天",
        "一半以上的天数",
        "几乎每天",
    ]
    assert texts.band("severe").label == "重度"
    assert texts.band("severe").meaning


def test_texts_in_english_use_the_published_timeframe(registry: InstrumentRegistry) -> None:
    texts = registry.get("gad7").texts("en")
    assert texts.timeframe == "Over the last 2 weeks"
    assert texts.items[0].text == "Feeling nervous, anxious, or on edge"


def test_texts_in_an_unloaded_language_are_refused(registry: InstrumentRegistry) -> None:
    with pytest.raises(InstrumentError, match="'ja'"):
        registry.get("phq9").texts("ja")


@pytest.mark.parametrize(
    ("instrument_id", "validated"),
    [("phq9", True), ("phq2", True), ("gad7", True), ("gad2", True),
     ("k6", False), ("who5", False), ("pcl5", False)],
)  # fmt: skip
def test_chinese_texts_say_whether_they_are_a_published_validated_version(
    registry: InstrumentRegistry, instrument_id: str, validated: bool
) -> None:
    instrument = registry.get(instrument_id)
    assert instrument.texts("zh_Hans").validated is validated
    assert instrument.translations["zh_Hans"].source


@pytest.mark.parametrize("age_band", ["16-17", "18-64", "65+"])
@pytest.mark.parametrize("role", ["resident", "family", "site_staff"])
def test_people_16_and_over_are_offered_every_bundled_instrument(
    registry: InstrumentRegistry, role: str, age_band: str
) -> None:
    assert len(registry.for_person(role, age_band)) == len(PUBLISHED)


@pytest.mark.parametrize("age_band", ["under_16", "12-15", "0-11", "unknown"])
def test_nobody_under_16_or_of_unknown_age_is_offered_an_adult_instrument(
    registry: InstrumentRegistry, age_band: str
) -> None:
    assert registry.for_person("resident", age_band) == []


def test_a_role_outside_the_audience_is_offered_nothing(registry: InstrumentRegistry) -> None:
    assert registry.for_person("visitor", "18-64") == []


def test_an_unreadable_age_band_is_refused(registry: InstrumentRegistry) -> None:
    with pytest.raises(InstrumentError, match="Age band 'adult'"):
        registry.for_person("resident", "adult")


def test_unknown_instrument_id_is_refused(registry: InstrumentRegistry) -> None:
    with pytest.raises(InstrumentError, match="no instrument 'isi'"):
        registry.get("isi")


# -- loader refusals -------------------------------------------------------------------------

# A made-up, test-only instrument (not a real questionnaire): 2 items scored 0–2, total 0–4.
TEST_INSTRUMENT = """
id = "testscale"
version = "0.1"
source = "Made up for Anxin's tests."
licence = "Test only."
name = { zh_Hans = "测试量表", en = "Test scale" }
timeframe = { zh_Hans = "过去一周", en = "Over the last week" }
stem = { zh_Hans = "请回答。", en = "Please answer." }

[languages.zh_Hans]
validated = false
translation_source = "test"

[languages.en]
validated = false
translation_source = "test"

[audience]
roles = ["site_staff"]
min_age = 16

[scoring]
method = "sum"
item_min = 0
item_max = 2
reverse_items = ["t2"]
multiplier = 1

[[options]]
value = 0
label = { zh_Hans = "否", en = "No" }

[[options]]
value = 1
label = { zh_Hans = "有时", en = "Sometimes" }

[[options]]
value = 2
label = { zh_Hans = "是", en = "Yes" }

[[items]]
id = "t1"
text = { zh_Hans = "第一题", en = "First" }

[[items]]
id = "t2"
text = { zh_Hans = "第二题", en = "Second" }

[[bands]]
id = "low"
min = 0
max = 1
label = { zh_Hans = "低", en = "Low" }
meaning = { zh_Hans = "低。", en = "Low." }

[[bands]]
id = "high"
min = 2
max = 4
label = { zh_Hans = "高", en = "High" }
meaning = { zh_Hans = "高。", en = "High." }

[[rules]]
id = "testscale.high"
type = "total_at_least"
threshold = 4
signal = "moderate"
flag = "high"
"""


def write(tmp_path: Path, text: str, name: str = "testscale.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_dropped_in_instrument_loads_next_to_the_bundled_ones(tmp_path: Path) -> None:
    write(tmp_path, TEST_INSTRUMENT)
    registry = InstrumentRegistry.load([bundled_dir(), tmp_path])
    instrument: Instrument = registry.get("testscale")
    assert len(registry) == len(PUBLISHED) + 1
    assert [i.id for i in registry.for_person("site_staff", "18-64")].count("testscale") == 1
    assert "testscale" not in [i.id for i in registry.for_person("resident", "18-64")]
    score = instrument.score([2, 0])  # item t2 is reversed: 2 + (2 - 0) = 4
    assert (score.total, score.band, score.flags) == (4, "high", ("high",))
    assert reasons(score.signals) == {("testscale.high",): RiskLevel.MODERATE}


REFUSALS = [
    pytest.param(
        ('text = { zh_Hans = "第二题", en = "Second" }', 'text = { en = "Second" }'),
        "item 't2' has no 'zh_Hans' text for 'text'",
        id="missing-item-translation",
    ),
    pytest.param(
        ('label = { zh_Hans = "是", en = "Yes" }', 'label = { zh_Hans = "是" }'),
        "option 2 of the instrument has no 'en' text for 'label'",
        id="missing-option-translation",
    ),
    pytest.param(
        ('meaning = { zh_Hans = "高。", en = "High." }', 'meaning = { en = "High." }'),
        "band 'high' has no 'zh_Hans' text for 'meaning'",
        id="missing-band-translation",
    ),
    pytest.param(
        ("min = 2\nmax = 4", "min = 1\nmax = 4"),
        "bands 'low' and 'high' overlap at 1",
        id="overlapping-bands",
    ),
    pytest.param(
        ("min = 2\nmax = 4", "min = 3\nmax = 4"),
        "no band covers totals 2–2",
        id="gap-between-bands",
    ),
    pytest.param(
        ("min = 2\nmax = 4", "min = 2\nmax = 3"),
        "no band covers totals 4–4",
        id="gap-at-the-top",
    ),
    pytest.param(
        ("min = 2\nmax = 4", "min = 2\nmax = 5"),
        "band 'high' goes beyond the possible totals 0–4",
        id="band-beyond-range",
    ),
    pytest.param(
        ("value = 2\n", "value = 3\n"),
        "option value 3 of the instrument is outside the scoring range 0–2",
        id="option-outside-scoring",
    ),
    pytest.param(
        ('id = "t2"', 'id = "t1"'),
        "item id 't1' appears twice",
        id="duplicate-item-id",
    ),
    pytest.param(
        ('type = "total_at_least"', 'type = "total_above_moon"'),
        "rule 'testscale.high' has unknown type 'total_above_moon' "
        "(known: item_value, scaled_at_most, total_at_least, total_below)",
        id="unknown-rule-type",
    ),
    pytest.param(
        ('signal = "moderate"', 'signal = "urgent"'),
        "rule 'testscale.high' names unknown risk level 'urgent'",
        id="unknown-risk-level",
    ),
    pytest.param(
        ('roles = ["site_staff"]', 'roles = ["visitor"]'),
        "[audience] names unknown role 'visitor'",
        id="unknown-role",
    ),
]


@pytest.mark.parametrize(("change", "message"), REFUSALS)
def test_unsafe_instrument_file_is_refused_naming_file_and_problem(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in TEST_INSTRUMENT
    path = write(tmp_path, TEST_INSTRUMENT.replace(old, new, 1))
    with pytest.raises(InstrumentError) as caught:
        InstrumentRegistry.load([tmp_path])
    text = str(caught.value)
    assert text == f"{path}: {message}."


def test_two_files_with_the_same_instrument_id_are_refused(tmp_path: Path) -> None:
    first = write(tmp_path, TEST_INSTRUMENT, "a.toml")
    second = write(tmp_path, TEST_INSTRUMENT, "b.toml")
    with pytest.raises(InstrumentError) as caught:
        InstrumentRegistry.load([tmp_path])
    assert str(caught.value) == f"{second}: instrument id 'testscale' is already used by {first}."


def test_a_drop_in_reusing_a_bundled_id_is_refused(tmp_path: Path) -> None:
    write(tmp_path, TEST_INSTRUMENT.replace('id = "testscale"', 'id = "phq9"', 1))
    with pytest.raises(InstrumentError, match="instrument id 'phq9' is already used by"):
        InstrumentRegistry.load([bundled_dir(), tmp_path])


def test_a_required_language_missing_from_every_text_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, TEST_INSTRUMENT)
    with pytest.raises(InstrumentError) as caught:
        InstrumentRegistry.load([tmp_path], languages=("zh_Hans", "en", "ug"))
    assert str(caught.value) == f"{path}: the instrument has no 'ug' text for 'name'."


def test_a_missing_instrument_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InstrumentError, match="does not exist"):
        InstrumentRegistry.load([tmp_path / "nowhere"])


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "id = ")
    with pytest.raises(
        InstrumentError, match=f"^{re.escape(str(path))}: the file is not valid TOML"
    ):
        InstrumentRegistry.load([tmp_path])


# -- CLI functions ----------------------------------------------------------------------------


def test_cli_list_prints_one_line_per_instrument_with_both_names(
    registry: InstrumentRegistry,
) -> None:
    out = io.StringIO()
    assert cli_list(registry, out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == len(PUBLISHED)
    phq9 = next(line for line in lines if line.startswith("phq9\t"))
    assert phq9.split("\t") == [
        "phq9", "1.0", "9 items", "Patient Health Questionnaire (PHQ-9)", "患者健康问卷（PHQ-9）"
    ]  # fmt: skip


def test_cli_score_prints_one_json_object(registry: InstrumentRegistry) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli_score(registry, "phq9", "0,0,0,0,0,0,0,0,2", out, err) == 0
    result = json.loads(out.getvalue())
    assert result["instrument"] == "phq9"
    assert (result["total"], result["band"], result["flags"]) == (2, "minimal", [])
    assert result["signals"] == [{"level": "high", "reasons": ["phq9.item9"]}]
    assert "scaled" not in result
    assert err.getvalue() == ""


def test_cli_score_includes_the_scaled_score_when_there_is_one(
    registry: InstrumentRegistry,
) -> None:
    out = io.StringIO()
    assert cli_score(registry, "who5", "3 3 2 2 2", out, io.StringIO()) == 0
    result = json.loads(out.getvalue())
    assert (result["total"], result["scaled"]) == (12, 48)
    assert result["flags"] == ["poor_wellbeing", "offer:phq9"]


@pytest.mark.parametrize(
    ("instrument_id", "answers", "message"),
    [
        ("gad2", "1", "gad2 needs 2 answers"),
        ("gad2", "1,4", "Answer 2 of gad2 is 4"),
        ("gad2", "1,two", "Answer 2 is 'two', which is not a whole number"),
        ("gad2", "  ", "No answers were given"),
        ("isi", "1,1", "There is no instrument 'isi'"),
    ],
    ids=["wrong-count", "out-of-range", "not-a-number", "empty", "unknown-id"],
)
def test_cli_score_with_bad_input_writes_one_sentence_and_returns_2(
    registry: InstrumentRegistry, instrument_id: str, answers: str, message: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli_score(registry, instrument_id, answers, out, err) == 2
    assert out.getvalue() == ""
    assert err.getvalue().startswith(message)
    assert err.getvalue().count("\n") == 1 and err.getvalue().rstrip().endswith(".")
