"""Read WordNet's data files into synset records and a plain-English pretraining corpus.

WordNet 3.0 ships as Debian's `wordnet-base` package (files under /usr/share/wordnet).
Only the zoo build needs it; the built models and task files are shipped in the repo.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = {"noun": "data.noun", "verb": "data.verb", "adjective": "data.adj", "adverb": "data.adv"}

# WordNet lexicographer file numbers (lex_filenum) -> their names, for the categories we use.
LEXNAMES = {
    3: "noun.Tops",
    4: "noun.act",
    5: "noun.animal",
    6: "noun.artifact",
    7: "noun.attribute",
    8: "noun.body",
    9: "noun.cognition",
    10: "noun.communication",
    11: "noun.event",
    12: "noun.feeling",
    13: "noun.food",
    14: "noun.group",
    15: "noun.location",
    16: "noun.motive",
    17: "noun.object",
    18: "noun.person",
    19: "noun.phenomenon",
    20: "noun.plant",
    21: "noun.possession",
    22: "noun.process",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    26: "noun.state",
    27: "noun.substance",
    28: "noun.time",
}


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its lemmas, part of speech, lexicographer file number and gloss."""

    offset: str
    pos: str
    lexnum: int
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def _parse_line(line: str, pos: str) -> Synset | None:
    if line.startswith(" ") or "|" not in line:
        return None  # licence header
    head, gloss = line.split("|", 1)
    fields = head.split()
    offset, lexnum, n_words = fields[0], int(fields[1]), int(fields[3], 16)
    lemmas = tuple(re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(n_words))
    parts = [p.strip() for p in gloss.strip().split(";")]
    definition = parts[0]
    examples = tuple(p.strip('"') for p in parts[1:] if p.startswith('"'))
    return Synset(offset, pos, lexnum, lemmas, definition, examples)


def read_synsets(wordnet_dir: Path = WORDNET_DIR) -> list[Synset]:
    """Parse every synset in WordNet's four data files, in file order."""
    if not (wordnet_dir / "data.noun").exists():
        raise FileNotFoundError(
            f"WordNet data not found under {wordnet_dir}. Install it with "
            "'apt-get install wordnet-base' (only the zoo build needs it)."
        )
    out: list[Synset] = []
    for pos, name in POS_FILES.items():
        with open(wordnet_dir / name, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                syn = _parse_line(line, pos)
                if syn is not None:
                    out.append(syn)
    return out


def corpus_documents(synsets: list[Synset], seed: int = 0) -> list[str]:
    """Turn synsets into short English documents ("word, word: definition. Example.").

    The part of speech and the lexicographer category are deliberately left out, so the
    embedded tasks that ask for them are a format the pretrained models never saw.
    """
    docs = []
    for s in synsets:
        text = f"{', '.join(s.lemmas[:3])}: {s.definition}."
        for ex in s.examples[:2]:
            text += f" {ex[:1].upper()}{ex[1:]}."
        docs.append(text)
    random.Random(seed).shuffle(docs)
    return docs
