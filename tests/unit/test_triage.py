"""Behaviour of the triage engine: one behaviour per test, plus the labelled set."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from core.risk import RiskLevel
from core.triage import Triage, TriageContext, cli_main, to_signal
from core.triage.lexicon import DEFAULT_DATA_DIR

LABELLED = Path(__file__).resolve().parents[1] / "data" / "triage_labelled.tsv"


@pytest.fixture(scope="module")
def triage() -> Triage:
    return Triage.load()


def level(triage: Triage, text: str, context: TriageContext | None = None) -> RiskLevel:
    return triage.classify(text, context).level


def test_negated_wish_to_die_is_not_high(triage: Triage) -> None:
    result = triage.classify("我不想死，只是想回家")
    assert result.level < RiskLevel.HIGH
    assert "negated" in result.reasons
    assert level(triage, "I don't want to die") < RiskLevel.HIGH


def test_negation_in_an_earlier_clause_does_not_cancel_intent(triage: Triage) -> None:
    assert level(triage, "我不是开玩笑，我真的想死") >= RiskLevel.HIGH
    assert level(triage, "I'm not joking, I want to die") >= RiskLevel.HIGH


def test_not_wanting_to_live_is_high(triage: Triage) -> None:
    assert level(triage, "I don't want to live anymore") == RiskLevel.HIGH
    assert level(triage, "我不想活了") == RiskLevel.HIGH


@pytest.mark.parametrize(
    "text",
    [
        "累死了",
        "笑死",
        "热死了",
        "饿死了",
        "烦死了",
        "我快闷死了",
        "想死你们了",
        "this is killing me lol",
        "dying to see my kids",
        "I could kill for a coffee",
        "killing time",
        "跳楼价甩卖",
    ],
)
def test_hyperbole_is_not_risk(triage: Triage, text: str) -> None:
    assert level(triage, text) <= RiskLevel.LOW


def test_hyperbole_reports_its_reason(triage: Triage) -> None:
    assert triage.classify("累死了").reasons == ("hyperbole",)


def test_hyperbole_does_not_hide_real_intent_in_the_same_message(triage: Triage) -> None:
    assert level(triage, "累死了，真想死") >= RiskLevel.HIGH


def test_film_or_news_is_not_high_for_the_speaker(triage: Triage) -> None:
    result = triage.classify("电影里主角自杀了")
    assert result.level < RiskLevel.HIGH
    assert "third_party.film" in result.reasons
    assert level(triage, "the movie ends with him killing himself") < RiskLevel.HIGH


def test_third_person_at_risk_is_moderate(triage: Triage) -> None:
    result = triage.classify("我室友说他想自杀")
    assert result.level == RiskLevel.MODERATE
    assert "third_party.risk" in result.reasons
    assert level(triage, "my roommate said he wants to kill himself") == RiskLevel.MODERATE


def test_reported_speech_keeps_the_previous_clause_subject(triage: Triage) -> None:
    assert level(triage, "同病房的小伙子半夜在哭，说想自杀") == RiskLevel.MODERATE


def test_speaker_moved_by_a_film_is_still_high(triage: Triage) -> None:
    assert level(triage, "看了那个电影，我也想自杀") >= RiskLevel.HIGH


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("kms", "en.slang.kms"),
        ("I want to unalive myself", "en.slang.unalive"),
        ("sewerslide", "en.slang.sewerslide"),
        ("想紫砂", "zh.slang.zisha"),
    ],
)
def test_slang_is_high(triage: Triage, text: str, reason: str) -> None:
    result = triage.classify(text)
    assert result.level == RiskLevel.HIGH
    assert reason in result.reasons


@pytest.mark.parametrize("text", ["不想活了", "活着没意思", "想解脱"])
def test_chinese_ideation_phrases_are_high(triage: Triage, text: str) -> None:
    assert level(triage, text) == RiskLevel.HIGH


@pytest.mark.parametrize(
    "text",
    [
        "活着好累",
        "希望睡着了就不要醒来",
        "I wish I could disappear",
        "everyone would be better off without me",
    ],
)
def test_passive_ideation_is_high(triage: Triage, text: str) -> None:
    assert level(triage, text) == RiskLevel.HIGH


def test_intent_with_means_and_timeframe_is_imminent(triage: Triage) -> None:
    result = triage.classify("我攒了一瓶安眠药，今晚就吃")
    assert result.level == RiskLevel.IMMINENT
    assert "timeframe.tonight" in result.reasons


def test_hoarded_pills_alone_are_high_not_imminent(triage: Triage) -> None:
    assert level(triage, "攒了一瓶安眠药") == RiskLevel.HIGH


@pytest.mark.parametrize(
    "text",
    [
        "今晚我就从楼上跳下去",
        "我想死，已经准备好了绳子",
        "我想烧炭，炭已经买好了",
        "I'm going to kill myself tonight",
    ],
)
def test_method_or_means_with_intent_is_imminent(triage: Triage, text: str) -> None:
    assert level(triage, text) == RiskLevel.IMMINENT


def test_intent_alone_is_high(triage: Triage) -> None:
    assert level(triage, "我想自杀") == RiskLevel.HIGH


def test_means_word_alone_is_everyday_speech(triage: Triage) -> None:
    assert level(triage, "请问可以在天台晒被子吗") == RiskLevel.NONE


def test_hopelessness_without_ideation_is_moderate(triage: Triage) -> None:
    for text in ("好绝望", "撑不下去了", "I can't cope anymore", "I had a panic attack"):
        assert level(triage, text) == RiskLevel.MODERATE, text
    assert level(triage, "一直失眠") == RiskLevel.MODERATE


@pytest.mark.parametrize(
    "text",
    ["谢谢你们这段时间的照顾，以后不用再担心我了", "goodbye everyone, this is my last message"],
)
def test_farewell_is_high(triage: Triage, text: str) -> None:
    result = triage.classify(text)
    assert result.level >= RiskLevel.HIGH
    assert "farewell" in result.reasons


def test_thanks_at_discharge_is_not_a_farewell(triage: Triage) -> None:
    assert level(triage, "谢谢你们这段时间的照顾，我明天出院了") == RiskLevel.NONE


@pytest.mark.parametrize("text", ["我想杀了他", "I'm going to hurt him"])
def test_harm_to_others_is_high(triage: Triage, text: str) -> None:
    result = triage.classify(text)
    assert result.level == RiskLevel.HIGH
    assert "others.harm" in result.reasons


@pytest.mark.parametrize("text", ["他又打我了", "my husband hits me", "家暴"])
def test_abuse_is_high(triage: Triage, text: str) -> None:
    result = triage.classify(text)
    assert result.level == RiskLevel.HIGH
    assert "abuse" in result.reasons


@pytest.mark.parametrize(
    "text", ["打我电话就行", "hit me up when the results are out", "the news really hit me hard"]
)
def test_hit_me_without_a_person_doing_it_is_not_abuse(triage: Triage, text: str) -> None:
    assert level(triage, text) < RiskLevel.HIGH


@pytest.mark.parametrize("text", ["我又割自己了", "I've been cutting myself"])
def test_self_harm_is_high(triage: Triage, text: str) -> None:
    result = triage.classify(text)
    assert result.level == RiskLevel.HIGH
    assert "self_harm" in result.reasons


def test_full_width_forms_are_normalised(triage: Triage) -> None:
    assert level(triage, "ｉ ｗａｎｔ ｔｏ ｄｉｅ") == RiskLevel.HIGH
    assert level(triage, "ＫＭＳ") == RiskLevel.HIGH


@pytest.mark.parametrize(
    "text", ["想 死", "想.死", "想～死", "我 想 自 杀", "k m s", "s u i c i d e", "k.m.s"]
)
def test_spacing_and_punctuation_tricks_are_seen_through(triage: Triage, text: str) -> None:
    assert level(triage, text) == RiskLevel.HIGH


def test_zero_width_characters_are_removed(triage: Triage) -> None:
    assert level(triage, "想\u200b死") == RiskLevel.HIGH
    assert level(triage, "k\u200dms") == RiskLevel.HIGH


def test_curly_apostrophes_read_like_straight_ones(triage: Triage) -> None:
    assert level(triage, "I don\u2019t want to live anymore") == RiskLevel.HIGH
    assert level(triage, "I don\u2019t want to die") < RiskLevel.HIGH


def test_repeated_letters_and_mixed_case_are_folded(triage: Triage) -> None:
    assert level(triage, "I want to dieeee") == RiskLevel.HIGH
    assert level(triage, "I WaNt To DiE") == RiskLevel.HIGH


def test_means_emoji_next_to_intent_raise_to_imminent(triage: Triage) -> None:
    assert level(triage, "我想死🔪") == RiskLevel.IMMINENT
    assert level(triage, "不想活了💊") == RiskLevel.IMMINENT
    assert level(triage, "想死 🪢") == RiskLevel.IMMINENT


def test_coffin_emoji_alone_is_not_high(triage: Triage) -> None:
    assert level(triage, "⚰️") < RiskLevel.HIGH
    assert level(triage, "🔪") == RiskLevel.NONE


def test_traditional_characters_are_read_and_reported(triage: Triage) -> None:
    result = triage.classify("我想自殺")
    assert result.level == RiskLevel.HIGH
    assert result.language == "zh_Hant"


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("核酸结果出来了吗", "zh_Hans"),
        ("核酸結果出來了嗎", "zh_Hant"),
        ("when can I leave", "en"),
        ("👍", "und"),
    ],
)
def test_language_is_detected_per_message(triage: Triage, text: str, language: str) -> None:
    assert triage.classify(text).language == language


@pytest.mark.parametrize(
    "answer", ["是", "是的", "嗯", "对", "有", "yes", "yeah", "y", "是的，最近经常想"]
)
def test_affirmative_after_suicide_question_is_high(triage: Triage, answer: str) -> None:
    context = TriageContext(asked_about_suicide=True, last_question="suicidal_thoughts")
    result = triage.classify(answer, context)
    assert result.level == RiskLevel.HIGH
    assert "context.affirmed" in result.reasons


@pytest.mark.parametrize("question", ["plan", "means", "timeframe"])
def test_affirmative_after_plan_question_is_imminent(triage: Triage, question: str) -> None:
    context = TriageContext(asked_about_suicide=True, last_question=question)
    assert level(triage, "有", context) == RiskLevel.IMMINENT


@pytest.mark.parametrize("answer", ["没有", "no", "不是", "nope"])
def test_denial_after_suicide_question_does_not_raise(triage: Triage, answer: str) -> None:
    context = TriageContext(asked_about_suicide=True, last_question="suicidal_thoughts")
    assert level(triage, answer, context) == RiskLevel.NONE


def test_bare_yes_without_context_is_not_risk(triage: Triage) -> None:
    assert level(triage, "是的") == RiskLevel.NONE


@pytest.mark.parametrize(
    "text",
    ["什么时候能解除隔离", "饭太难吃了", "核酸结果出来了吗", "孩子在家闹得我要疯了", "我快闷死了"],
)
def test_everyday_isolation_chatter_stays_low(triage: Triage, text: str) -> None:
    assert level(triage, text) <= RiskLevel.LOW


def test_to_signal_carries_level_and_reasons(triage: Triage) -> None:
    signal = to_signal(triage.classify("我想死"))
    assert signal is not None
    assert signal.source == "triage"
    assert signal.level == RiskLevel.HIGH
    assert signal.reasons == ("zh.intent.direct",)
    assert to_signal(triage.classify("饭太难吃了")) is None


def test_cli_prints_one_json_object_per_line() -> None:
    stdin = io.StringIO("我想死\n饭太难吃了\nkms\n")
    stdout = io.StringIO()
    assert cli_main(stdin, stdout) == 0
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [line["level"] for line in lines] == ["high", "none", "high"]
    assert lines[0]["reasons"] == ["zh.intent.direct"]
    assert lines[0]["language"] == "zh_Hans"


def _copy_data(tmp_path: Path) -> Path:
    target = tmp_path / "triage"
    shutil.copytree(DEFAULT_DATA_DIR, target)
    return target


def test_broken_pattern_raises_a_clear_value_error(tmp_path: Path) -> None:
    data = _copy_data(tmp_path)
    lexicon = data / "lexicon_en.toml"
    lexicon.write_text(
        lexicon.read_text(encoding="utf-8").replace("'\\bkms\\b", "'(\\bkms\\b", 1),
        encoding="utf-8",
    )
    with pytest.raises(
        ValueError, match=r"lexicon_en\.toml: cue \d+ \(en\.slang\.kms\).*not a valid regular"
    ):
        Triage.load(data)


def test_broken_toml_raises_a_clear_value_error(tmp_path: Path) -> None:
    data = _copy_data(tmp_path)
    (data / "modifiers.toml").write_text("[clause\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"modifiers\.toml is not valid TOML"):
        Triage.load(data)


def test_unknown_level_raises_a_clear_value_error(tmp_path: Path) -> None:
    data = _copy_data(tmp_path)
    lexicon = data / "lexicon_zh.toml"
    lexicon.write_text(
        lexicon.read_text(encoding="utf-8").replace('level = "high"', 'level = "severe"', 1),
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"lexicon_zh\.toml.*'severe' is not a level"):
        Triage.load(data)


def test_capturing_group_in_a_pattern_is_rejected(tmp_path: Path) -> None:
    data = _copy_data(tmp_path)
    lexicon = data / "lexicon_zh.toml"
    lexicon.write_text(
        lexicon.read_text(encoding="utf-8").replace("'绳子|🪢'", "'(绳子)|🪢'", 1), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"capturing group"):
        Triage.load(data)


def test_labelled_set_recall_and_false_alarms(triage: Triage) -> None:
    rows: list[tuple[RiskLevel, str]] = []
    for line in LABELLED.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#") or line.startswith("level\t"):
            continue
        label, text = line.split("\t", 1)
        rows.append((RiskLevel.parse(label), text))
    assert len(rows) >= 400

    confusion: Counter[tuple[RiskLevel, RiskLevel]] = Counter()
    missed: list[str] = []
    false_alarms: list[str] = []
    for label, text in rows:
        got = triage.classify(text).level
        confusion[(label, got)] += 1
        if label >= RiskLevel.HIGH and got < RiskLevel.HIGH:
            missed.append(f"{label.label}->{got.label}: {text}")
        if label <= RiskLevel.LOW and got >= RiskLevel.HIGH:
            false_alarms.append(f"{label.label}->{got.label}: {text}")

    positives = sum(1 for label, _ in rows if label >= RiskLevel.HIGH)
    negatives = sum(1 for label, _ in rows if label <= RiskLevel.LOW)
    recall = 1 - len(missed) / positives
    false_alarm_rate = len(false_alarms) / negatives
    print(
        f"\nrecall(high+imminent)={recall:.3f} false alarms(none/low→≥high)={false_alarm_rate:.3f}"
    )
    print("label\\got " + " ".join(f"{lv.label:>9}" for lv in RiskLevel))
    for label in RiskLevel:
        print(f"{label.label:>9} " + " ".join(f"{confusion[(label, got)]:>9}" for got in RiskLevel))
    print("\n".join(missed + false_alarms))
    assert recall >= 0.95
    assert false_alarm_rate <= 0.05
