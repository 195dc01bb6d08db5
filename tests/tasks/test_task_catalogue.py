"""Every registered task: loads, formats consistently, and scores a perfect prediction as 100."""

from __future__ import annotations

import pytest

from ptune import tasks
from ptune.errors import ConfigError
from ptune.tasks import TASKS, load_rows, load_split
from ptune.tasks.glue import STSB_BUCKETS, TextTask
from ptune.tasks.metrics import METRICS
from ptune.tasks.superglue import char_span

NAMES = sorted(TASKS)
LIMIT = 64  # enough rows for every class of the shared validation splits; keeps the tests fast


def test_registry_holds_glue_and_superglue():
    glue = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    superglue = {"boolq", "cb", "copa", "multirc", "record", "wic", "wsc", "superglue_rte"}
    assert set(TASKS) == glue | superglue
    assert tasks.get("superglue_rte").hub_config == "rte" and tasks.get("rte").hub_id == "nyu-mll/glue"
    assert tasks.get("wsc").hub_config == "wsc.fixed"


def test_unknown_task_names_the_value_and_the_choices():
    with pytest.raises(ConfigError) as err:
        tasks.get("sst")
    message = str(err.value)
    assert "\n" not in message
    assert "unknown task 'sst'" in message and "sst2" in message and "superglue_rte" in message


@pytest.mark.parametrize("name", NAMES)
def test_task_declares_registered_metrics(name):
    task = tasks.get(name)
    assert task.name == name
    assert task.main_metric in task.metric_names
    assert all(metric in METRICS for metric in task.metric_names)
    assert {"train", "validation", "test"} <= set(task.splits)


@pytest.fixture
def examples(request, data_root):
    task = tasks.get(request.param)
    return task, load_split(task, "validation", root=data_root(task), limit=LIMIT)


@pytest.mark.parametrize("examples", NAMES, indirect=True)
def test_examples_index_their_candidates(examples):
    task, exs = examples
    assert exs
    for ex in exs:
        assert ex.candidates and all(isinstance(c, str) and c for c in ex.candidates)
        assert 0 <= ex.target < len(ex.candidates), ex
        assert ex.label is not None
        if isinstance(task, TextTask):
            assert ex.source.startswith(task.prefix + " ")
        if task.head == "classification":
            assert ex.candidates == task.label_names and ex.target < task.num_labels
        if task.head == "regression":
            assert isinstance(ex.label, float) and ex.candidates == STSB_BUCKETS


@pytest.mark.parametrize("examples", NAMES, indirect=True)
def test_texts_arity_matches_the_head(examples):
    task, exs = examples
    for ex in exs:
        assert all(isinstance(a, str) and a and (b is None or isinstance(b, str)) for a, b in ex.texts)
        if task.head == "multiple_choice":
            assert len(ex.texts) == len(ex.candidates) >= 2
        else:
            assert len(ex.texts) == 1
        if task.head == "span":
            text = ex.texts[0][0]
            assert ex.spans is not None and len(ex.spans) == 2
            assert all(0 <= start < end <= len(text) for start, end in ex.spans)
        else:
            assert ex.spans is None


@pytest.mark.parametrize("examples", NAMES, indirect=True)
def test_perfect_predictions_score_100(examples):
    task, exs = examples
    decoded = [task.decode(ex, ex.target) for ex in exs]
    result = task.compute_metrics(decoded, exs)
    assert set(result) == set(task.metric_names)
    assert all(type(v) is float for v in result.values())
    # raw candidate indices score the same as decoded values (decode is idempotent)
    assert task.compute_metrics([ex.target for ex in exs], exs) == result
    if task.head == "regression":
        # T5 buckets lose up to 0.1 of the score; the encoder's regression head predicts the float
        assert result[task.main_metric] > 99.0
        assert task.compute_metrics([ex.label for ex in exs], exs)[task.main_metric] == pytest.approx(100.0)
    else:
        assert result[task.main_metric] == pytest.approx(100.0)


@pytest.mark.parametrize("examples", [n for n in NAMES if n != "stsb"], indirect=True)
def test_wrong_predictions_score_below_100(examples):
    task, exs = examples
    wrong = [(ex.target + 1) % len(ex.candidates) for ex in exs]
    assert task.compute_metrics(wrong, exs)[task.main_metric] < 100.0


@pytest.mark.parametrize("name", NAMES)
def test_unlabelled_rows_give_target_minus_one(name, data_root):
    task = tasks.get(name)
    row = load_rows(task.hub_id, task.hub_config, task.splits["validation"], root=data_root(task), limit=1)[0]
    row = {**row, "answers": []} if name == "record" else {**row, "label": -1.0 if name == "stsb" else -1}
    ex = task.example(row)
    assert ex.target == -1 and ex.label is None
    assert task.compute_metrics([0], [ex]) == {}


def test_mnli_exposes_both_validation_sets(data_root):
    mnli = tasks.get("mnli")
    assert mnli.splits["validation"] == "validation_matched"
    mismatched = load_split(
        mnli, "validation_mismatched", root=data_root(mnli, "validation_mismatched"), limit=4
    )
    assert len(mismatched) == 4 and mismatched[0].source.startswith("mnli hypothesis: ")


def test_unknown_split_role_lists_the_roles():
    with pytest.raises(ConfigError, match=r"unknown split role 'dev'; choose one of: .*validation"):
        load_split(tasks.get("rte"), "dev")


# ----------------------------------------------------------------------- formats, on hand rows


def test_t5_glue_format_sorts_columns_and_encoder_keeps_their_order():
    mnli = tasks.get("mnli").example({"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0})
    assert mnli.source == "mnli hypothesis: H. premise: P."
    assert mnli.texts == (("P.", "H."),) and mnli.candidates[mnli.target] == "contradiction"
    sst2 = tasks.get("sst2").example({"sentence": "a charming film ", "label": 1, "idx": 0})
    assert sst2.source == "sst2 sentence: a charming film " and sst2.texts == (("a charming film ", None),)
    boolq = tasks.get("boolq").example({"question": "is it", "passage": "It is.", "idx": 0, "label": 1})
    assert (
        boolq.source == "boolq passage: It is. question: is it" and boolq.candidates[boolq.target] == "True"
    )
    rte = tasks.get("superglue_rte").example({"premise": "P.", "hypothesis": "H.", "idx": 0, "label": 0})
    assert rte.source == "rte hypothesis: H. premise: P."
    wic = tasks.get("wic").example(
        {
            "word": "bank",
            "sentence1": "A.",
            "sentence2": "B.",
            "start1": 0,
            "start2": 0,
            "end1": 1,
            "end2": 1,
            "idx": 0,
            "label": 0,
        }
    )
    assert wic.source == "wic sentence1: A. sentence2: B. word: bank" and wic.texts == (("bank: A.", "B."),)


@pytest.mark.parametrize(
    ("score", "bucket"),
    # 0.5 * 5 = 2.5 rounds half to even -> 2 -> "0.4" (as tf.round); 0.7 * 5 = 3.5 -> 4 -> "0.8"; 4.95 -> 24.75 -> 25
    [(0.5, "0.4"), (0.7, "0.8"), (4.95, "5.0"), (0.0, "0.0"), (3.1, "3.2")],
)
def test_stsb_rounds_to_the_nearest_fifth(score, bucket):
    stsb = tasks.get("stsb")
    ex = stsb.example({"sentence1": "a", "sentence2": "b", "label": score, "idx": 0})
    assert ex.candidates[ex.target] == bucket and ex.label == score
    assert stsb.decode(ex, ex.target) == float(bucket) and stsb.decode(ex, 3.3) == 3.3


def test_copa_encoder_pairs_premise_and_connective_with_each_choice():
    row = {"premise": "I fell.", "choice1": "A.", "choice2": "B.", "question": "effect", "idx": 0, "label": 1}
    ex = tasks.get("copa").example(row)
    assert ex.source == "copa choice1: A. choice2: B. premise: I fell. question: effect"
    context = "I fell. What happened as a result?"
    assert (
        ex.texts == ((context, "A."), (context, "B."))
        and ex.candidates == ("choice1", "choice2")
        and ex.target == 1
    )


def test_multirc_strips_markup_and_groups_by_question():
    task = tasks.get("multirc")
    row = {"paragraph": "<b>Sent 1: </b>Hi.<br>", "question": "Q?", "answer": "A", "label": 1}
    a = task.example({**row, "idx": {"paragraph": 1, "question": 0, "answer": 0}})
    b = task.example({**row, "idx": {"paragraph": 1, "question": 0, "answer": 1}})
    c = task.example({**row, "idx": {"paragraph": 0, "question": 1, "answer": 2}})
    assert a.source == "multirc question: Q? answer: A paragraph: Sent 1: Hi. "
    assert a.texts == (("Sent 1: Hi. ", "Q? A"),)
    assert a.group == b.group != c.group


def test_record_candidates_follow_the_passage_and_fill_the_placeholder():
    passage = "Ann met Bob in Rome.\n@highlight\nBob visits Rome\n@highlight\nAnn is happy"
    spans = {
        "text": ["Ann", "Bob", "Rome", "Bob", "Rome", "Ann"],
        "start": [0, 8, 15, 41, 52, 58],
        "end": [3, 11, 19, 44, 56, 61],
    }
    row = {
        "passage": passage,
        "query": "@placeholder was in Italy.",
        "entities": ["Ann", "Bob", "Rome"],
        "entity_spans": spans,
        "answers": ["Bob"],
        "idx": {"passage": 3, "query": 17},
    }
    task = tasks.get("record")
    ex = task.example(row)
    clean = "Ann met Bob in Rome. Bob visits Rome. Ann is happy"
    assert ex.source == f"record query: @placeholder was in Italy. entities: Ann, Bob, Rome passage: {clean}"
    assert (
        ex.candidates == ("Ann", "Bob", "Rome") and ex.target == 1 and ex.label == ["Bob"] and ex.group == 17
    )
    assert ex.texts[2] == (clean, "Rome was in Italy.")
    assert task.decode(ex, 1) == "Bob" and task.decode(ex, 9) == "" and task.decode(ex, "Bob") == "Bob"
    # an answer outside the entity list leaves no gold candidate
    assert task.example({**row, "answers": ["Carl"]}).target == -1


def test_wsc_marks_spans_like_t5_and_gives_char_spans():
    text = "The city councilmen refused the demonstrators a permit because they feared violence."
    row = {
        "text": text,
        "span1_index": 0,
        "span2_index": 9,
        "span1_text": "The city councilmen",
        "span2_text": "they",
        "idx": 0,
        "label": 1,
    }
    ex = tasks.get("wsc").example(row)
    assert (
        ex.source
        == "wsc text: * The city councilmen * refused the demonstrators a permit because # they # feared violence."
    )
    assert [text[s:e] for s, e in ex.spans] == ["The city councilmen", "they"]
    assert ex.texts == ((text, None),) and ex.candidates[ex.target] == "True"


def test_char_span_falls_back_to_word_count_when_the_span_text_differs():
    text = "Then Kamenev and Zinoviev left."
    assert char_span(text, 1, "kamenev") == (5, 12)  # case differs: still the exact characters
    assert char_span(text, 1, "Kamenev Zinoviev") == (5, 16)  # two words from word 1: "Kamenev and"
    assert char_span(text, 9, "Zinoviev") == (17, 25)  # index past the end: first occurrence
