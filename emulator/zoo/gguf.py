"""GGUF checkpoints: dequantised once through transformers' GGUF loader, then cached as a plain HF checkpoint.

transformers reads a `.gguf` file (`from_pretrained(dir, gguf_file=name)`, with the `gguf` package)
into an ordinary torch model, but slowly (tens of seconds for a 100 MB file, mostly metadata
parsing and dequantisation). The result is saved once under `<cache>/gguf/<sha256 of the file>/`
so later loads read safetensors in seconds. `<cache>` is `$OFFSITE_CACHE_DIR`, else `~/.cache/offsite`.
A small index maps (path, size, mtime) to the file's hash, so a warm load does not re-hash the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

GGUF_MAGIC = b"GGUF"
INSTALL_HINT = "pip install 'offsite[real]'"
# GGUF architectures transformers can read that are not decoder-only causal LMs.
_NOT_CAUSAL = {"t5", "t5encoder", "umt5", "bert", "nomic-bert", "jina-bert-v2"}
_SOURCE = "gguf_source.json"


class GGUFError(ValueError):
    """A GGUF file that cannot be loaded; the message says why and what to do."""


def is_gguf(spec: str | os.PathLike) -> bool:
    """Whether a model reference names a `.gguf` file."""
    return str(spec).lower().endswith(".gguf")


def cache_root() -> Path:
    """Where dequantised GGUF checkpoints live: `$OFFSITE_CACHE_DIR/gguf`, else `~/.cache/offsite/gguf`."""
    base = os.environ.get("OFFSITE_CACHE_DIR") or "~/.cache/offsite"
    return Path(base).expanduser() / "gguf"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _index_path() -> Path:
    return cache_root() / "index.json"


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _read_index() -> dict[str, str]:
    try:
        return json.loads(_index_path().read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _remember(path: Path, digest: str) -> None:
    """Record (path, size, mtime) -> hash; written via a rename so readers never see half a file."""
    index = _read_index()
    index[_file_key(path)] = digest
    tmp = _index_path().with_name(f".index-{uuid.uuid4().hex}.json")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    tmp.replace(_index_path())


def require_gguf_package() -> None:
    """Raise GGUFError when the `gguf` package (transformers' GGUF reader needs it) is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError(
            f"reading GGUF files needs the 'gguf' package, which is not installed: {INSTALL_HINT}"
        )


def supported_architectures() -> set[str] | None:
    """GGUF architectures this transformers can turn into a causal LM; None when it cannot say."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return None
    archs = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:
        from transformers.integrations.gguf import GGUF_ARCHS

        archs |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return archs - _NOT_CAUSAL


def read_architecture(path: Path) -> str:
    """The file's `general.architecture`, after checking it is a complete, readable GGUF file."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except KeyError as exc:
        raise GGUFError(f"{path} is a corrupt GGUF file: its metadata has no general.architecture") from exc
    except Exception as exc:  # the reader fails in many ways on damaged bytes; all mean the same here
        raise GGUFError(f"{path} is a corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from exc
    if end > path.stat().st_size:
        raise GGUFError(
            f"{path} is a truncated GGUF file: its tensors need {end} bytes, it has {path.stat().st_size}"
        )
    return arch


def check_architecture(path: Path, arch: str) -> None:
    """Refuse an architecture transformers cannot load as a decoder-only causal LM."""
    archs = supported_architectures()
    if archs is not None and arch not in archs and arch.replace("-", "_") not in archs:
        raise GGUFError(
            f"{path.name}: GGUF architecture {arch!r} is not supported by this transformers' GGUF loader "
            f"as a causal LM (supported: {', '.join(sorted(archs))}); convert the model to a Hugging Face "
            "checkpoint directory instead"
        )


def _dequantise(path: Path, target: Path) -> None:
    """Load the GGUF through transformers and save it as a plain fp32 checkpoint in `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, NotImplementedError, OSError, RuntimeError) as exc:
        raise GGUFError(f"transformers could not load {path.name}: {exc}") from exc
    # The loaded model still says it is GGUF-quantised, which save_pretrained refuses; its weights
    # are dense already, so saving it as a plain checkpoint loses nothing.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def gguf_checkpoint(spec: str | os.PathLike, announce: Callable[[str], None] | None = None) -> Path:
    """The cached HF checkpoint directory of a GGUF file, dequantising it on first use."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {spec} does not exist")
    require_gguf_package()
    root = cache_root()
    known = _read_index().get(_file_key(path))
    if known and (root / known / "config.json").exists():
        return root / known
    digest = file_sha256(path)
    target = root / digest
    if not (target / "config.json").exists():
        check_architecture(path, read_architecture(path))
        _build(path, target, announce or _to_stderr)
    _remember(path, digest)
    return target


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _build(path: Path, target: Path, announce: Callable[[str], None]) -> None:
    """Dequantise into a temporary directory, then rename it into place (atomic for readers)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    announce(f"Dequantising {path.name} once into {target} (later loads read that copy) ...")
    start = time.perf_counter()
    tmp = target.parent / f".tmp-{target.name[:16]}-{uuid.uuid4().hex}"
    try:
        _dequantise(path, tmp)
        info = {"file": path.name, "bytes": path.stat().st_size, "sha256": target.name}
        (tmp / _SOURCE).write_text(json.dumps(info, indent=1))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # a concurrent writer's complete copy is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    announce(f"Dequantised {path.name} in {time.perf_counter() - start:.0f} s")
