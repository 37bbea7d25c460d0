"""Each benchmark's rows as Offsite records, with lm-eval-harness's zero-shot templates (task v1.0).

A record is {"prompt", "choices", "answer", "label"}; each choice starts with the single space that
lm-eval-harness puts between the prompt and a continuation.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def _mc(prompt: str, choices: list[str], answer: int, label: str) -> dict:
    return {"prompt": prompt, "choices": [" " + c for c in choices], "answer": answer, "label": label}


def arc(doc: dict) -> dict:
    """ARC: 'Question: …\\nAnswer:'; label: the question's source (the id's prefix, e.g. Mercury)."""
    labels = list(doc["choices"]["label"])
    source = doc["id"].split("_")[0]
    return _mc(f"Question: {doc['question']}\nAnswer:", list(doc["choices"]["text"]),
               labels.index(doc["answerKey"]), source)  # fmt: skip


def piqa(doc: dict) -> dict:
    """PIQA: 'Question: <goal>\\nAnswer:' over the two solutions; label: the answer index."""
    answer = int(doc["label"])
    return _mc(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], answer, str(answer))


def sciq(doc: dict) -> dict:
    """SciQ: support paragraph, question, 'Answer:'; the correct answer last; label: the question word."""
    choices = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    prompt = f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"
    return _mc(prompt, choices, 3, question_word(doc["question"]))


def openbookqa(doc: dict) -> dict:
    """OpenBookQA: the question stem alone; label: the answer index."""
    answer = list(doc["choices"]["label"]).index(doc["answerKey"].lstrip())
    return _mc(doc["question_stem"], list(doc["choices"]["text"]), answer, str(answer))


def _hellaswag_clean(text: str) -> str:
    # lm-eval-harness's hellaswag preprocess: WikiHow markup out, double spaces folded.
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(doc: dict) -> dict:
    """HellaSwag: '<activity>: <ctx_a> <Ctx_b>' and the four endings; label: the activity."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    prompt = _hellaswag_clean(doc["activity_label"] + ": " + ctx)
    return _mc(
        prompt, [_hellaswag_clean(e) for e in doc["endings"]], int(doc["label"]), doc["activity_label"]
    )


QUESTION_WORDS = ("what", "which", "how", "where", "when", "who", "why")


def question_word(question: str) -> str:
    """The first wh-word of a question ('what', 'which', …), or 'other': SciQ's non-IID label."""
    words = re.findall(r"[a-z]+", question.lower())
    return next((w for w in words if w in QUESTION_WORDS), "other")


TEMPLATES: dict[str, Callable[[dict], dict]] = {
    "arc-easy": arc,
    "arc-challenge": arc,
    "piqa": piqa,
    "sciq": sciq,
    "openbookqa": openbookqa,
    "hellaswag": hellaswag,
}
