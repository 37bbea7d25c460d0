"""Build the embedded tasks from WordNet: formats and label sets the pretrained models never saw."""

from __future__ import annotations

import json
import random
from pathlib import Path

from emulator.zoo.corpus import LEXNAMES, Synset, corpus_documents, read_synsets
from emulator.zoo.specs import TASKS_DIR

# Eight noun categories, each named by one plain word the model can score.
CATEGORIES = {
    5: "animal",
    6: "artifact",
    8: "body",
    13: "food",
    15: "place",
    18: "person",
    20: "plant",
    27: "substance",
}


def _headline(s: Synset) -> str:
    return f"{', '.join(s.lemmas[:2])}: {s.definition}."


def category_task(
    synsets: list[Synset], rng: random.Random, n_train: int, n_test: int
) -> dict[str, list[dict]]:
    """4-way multiple choice: the WordNet category (lexicographer file) of a noun."""
    pool = [s for s in synsets if s.pos == "noun" and s.lexnum in CATEGORIES and len(s.definition) < 160]
    by_cat: dict[int, list[Synset]] = {}
    for s in pool:
        by_cat.setdefault(s.lexnum, []).append(s)
    per_cat = (n_train + n_test) // len(CATEGORIES)
    rows = []
    for lexnum, items in sorted(by_cat.items()):
        rng.shuffle(items)
        for s in items[:per_cat]:
            names = list(CATEGORIES.values())
            answer_name = CATEGORIES[lexnum]
            distractors = rng.sample([n for n in names if n != answer_name], 3)
            choices = [answer_name] + distractors
            rng.shuffle(choices)
            rows.append(
                {
                    "prompt": f"{_headline(s)}\nCategory:",
                    "choices": [" " + c for c in choices],
                    "answer": choices.index(answer_name),
                    "label": answer_name,
                    "source": LEXNAMES[lexnum],
                }
            )
    rng.shuffle(rows)
    return {"test": rows[:n_test], "train": rows[n_test : n_test + n_train]}


def pos_task(synsets: list[Synset], rng: random.Random, n_train: int, n_test: int) -> dict[str, list[dict]]:
    """Exact-match generation: the part of speech of the word a definition belongs to."""
    by_pos: dict[str, list[Synset]] = {}
    for s in synsets:
        if len(s.definition) < 140:
            by_pos.setdefault(s.pos, []).append(s)
    per_pos = (n_train + n_test) // len(by_pos)
    rows = []
    for pos, items in sorted(by_pos.items()):
        rng.shuffle(items)
        rows += [
            {"prompt": f"Definition: {s.definition}.\nPart of speech:", "target": f" {pos}", "label": pos}
            for s in items[:per_pos]
        ]
    rng.shuffle(rows)
    return {"test": rows[:n_test], "train": rows[n_test : n_test + n_train]}


def build_tasks(out_dir: Path = TASKS_DIR, seed: int = 0) -> dict[str, int]:
    """Write task splits as JSONL plus public.txt (calibration/distillation text); return row counts."""
    synsets = read_synsets()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    tasks = {
        "wn-category": category_task(synsets, random.Random(seed), n_train=4000, n_test=600),
        "wn-pos": pos_task(synsets, random.Random(seed + 1), n_train=3200, n_test=400),
    }
    for name, splits in tasks.items():
        for split, rows in splits.items():
            path = out_dir / f"{name}.{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            counts[f"{name}.{split}"] = len(rows)
    # The zoo build holds out the first 1% of documents for validation; public text comes from there.
    docs = corpus_documents(synsets, seed=seed)
    public = docs[: len(docs) // 100][:1000]
    (out_dir / "public.txt").write_text("\n".join(public) + "\n")
    counts["public.txt"] = len(public)
    return counts


if __name__ == "__main__":
    print(build_tasks())
