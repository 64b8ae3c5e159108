"""Tokenizers: what `modexp prepare` encodes a corpus with, and what turns a run's token ids back into text.

A tokenizer is named by a SPEC:

- ``bytes``: UTF-8 bytes, vocabulary 256, end-of-text 0 (the NUL byte, as the byte-level corpora use it).
- ``bpe:N``: a byte-level BPE of N tokens trained on the source with Hugging Face ``tokenizers`` (saved beside
  the shards as tokenizer.json), with ``<|endoftext|>`` as its end-of-text token.
- a path to a ``tokenizer.json`` (or a folder holding one): any Hugging Face ``tokenizers`` tokenizer.
- a Hugging Face tokenizer name (``gpt2``, ``EleutherAI/gpt-neox-20b``): fetched from the hub, so only on a
  machine that reaches it; saved beside the shards like a trained one.
- ``tiktoken:NAME`` (``tiktoken:gpt2``, ``tiktoken:cl100k_base``): OpenAI's tiktoken encodings.

A prepared corpus records which one it used in its meta.json (``describe()``); ``load`` rebuilds it from that
record and the corpus folder, so that sampling and the routing figure show a run's tokens as text.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ModexpError

TOKENIZER_FILE = "tokenizer.json"
EOT = "<|endoftext|>"
# End-of-text tokens of common tokenizers, in the order they are looked for.
EOT_CANDIDATES = (EOT, "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "[SEP]")
MAX_VOCAB = 2**32  # ids are stored as uint32 at most
SPEC_HELP = "bytes, bpe:N, a tokenizer.json path, a Hugging Face tokenizer name or tiktoken:NAME"


class Tokenizer:
    """The common interface: batch encoding (on all cores where the library can), decoding, per-token text."""

    kind: str
    spec: str
    vocab_size: int
    eot_id: int | None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token's own text (a subword, a byte, a special token), for showing which tokens were routed."""
        raise NotImplementedError

    def save(self, folder: Path) -> str | None:
        """Write what load() needs into folder; the file's name, or None when the spec alone suffices."""
        return None

    def describe(self, file: str | None) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "file": file,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
        }


class ByteTokenizer(Tokenizer):
    kind = "bytes"

    def __init__(self) -> None:
        self.spec, self.vocab_size, self.eot_id = "bytes", 256, 0

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def pieces(self, ids: Iterable[int]) -> list[str]:
        # One byte each: printable ASCII as itself, anything else as one replacement glyph (keeps columns).
        return [chr(i) if 32 <= i < 127 or i in (9, 10, 13) else "\ufffd" for i in ids]


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer (a tokenizer.json, a hub name, or a BPE trained here)."""

    kind = "tokenizers"

    def __init__(self, tokenizer: Any, spec: str) -> None:
        self.tokenizer, self.spec = tokenizer, spec
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        found = (tokenizer.token_to_id(t) for t in EOT_CANDIDATES)
        self.eot_id = next((i for i in found if i is not None), None)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Rust threads (all cores); no special tokens added: documents are joined by end-of-text only.
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return self.tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)

    def save(self, folder: Path) -> str:
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        return TOKENIZER_FILE


class TiktokenTokenizer(Tokenizer):
    kind = "tiktoken"

    def __init__(self, name: str) -> None:
        import tiktoken

        try:
            self.encoding = tiktoken.get_encoding(name)
        except ValueError as exc:  # an unknown name
            raise ModexpError(f"tiktoken:{name} is not a tiktoken encoding ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - no network, no cached file: one line, not a traceback
            raise ModexpError(
                f"tiktoken:{name} could not be loaded ({type(exc).__name__}: {first_words(exc)}): tiktoken "
                "downloads its encodings once; on an offline machine copy its cache (TIKTOKEN_CACHE_DIR) or use "
                "bpe:N or a tokenizer.json"
            ) from None
        self.spec, self.vocab_size, self.eot_id = (
            f"tiktoken:{name}",
            self.encoding.n_vocab,
            self.encoding.eot_token,
        )

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.encoding.decode_single_token_bytes(i).decode("utf-8", errors="replace") for i in ids]


def first_words(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_spec(spec: str) -> None:
    """Refuse a malformed SPEC before any work (a `bpe:` size, a tokenizer file that does not exist)."""
    if spec.startswith("bpe:"):
        size = spec.removeprefix("bpe:")
        if not size.isdigit() or not 257 <= int(size) <= MAX_VOCAB:
            raise ModexpError(
                f"--tokenizer {spec} is not allowed: bpe:N needs an integer N from 257 (256 bytes and "
                f"end-of-text) to {MAX_VOCAB} (token ids are stored as uint32 at most)"
            )
    elif spec.startswith("tiktoken:"):
        if not spec.removeprefix("tiktoken:"):
            raise ModexpError(
                "--tokenizer tiktoken: names no encoding: e.g. tiktoken:gpt2 or tiktoken:cl100k_base"
            )
    elif spec != "bytes" and _looks_like_path(spec) and not Path(spec).expanduser().exists():
        raise ModexpError(f"--tokenizer {spec}: tokenizer file {spec} does not exist (give {SPEC_HELP})")


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".json") or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def from_spec(spec: str, training_texts: Callable[[], Iterator[str]] | None = None) -> Tokenizer:
    """The tokenizer SPEC names; `bpe:N` is trained on training_texts() (a fresh iterator of documents)."""
    check_spec(spec)
    if spec == "bytes":
        return ByteTokenizer()
    if spec.startswith("tiktoken:"):
        return TiktokenTokenizer(spec.removeprefix("tiktoken:"))
    from tokenizers import Tokenizer as RustTokenizer

    if spec.startswith("bpe:"):
        if training_texts is None:
            raise ModexpError(f"--tokenizer {spec} needs a source to train on")
        return HFTokenizer(train_bpe(int(spec.removeprefix("bpe:")), training_texts()), spec)
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        path = path / TOKENIZER_FILE if path.is_dir() else path
        try:
            return HFTokenizer(RustTokenizer.from_file(str(path)), spec)
        except Exception as exc:  # noqa: BLE001 - the library raises bare Exceptions for bad files
            raise ModexpError(
                f"--tokenizer {spec}: {path} is not a tokenizers file ({first_words(exc)})"
            ) from None
    try:
        return HFTokenizer(RustTokenizer.from_pretrained(spec), spec)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, gated repository
        raise ModexpError(
            f"--tokenizer {spec}: no such file, and the Hugging Face hub gave no tokenizer of that name "
            f"({first_words(exc)}); give {SPEC_HELP}"
        ) from None


def train_bpe(vocab_size: int, texts: Iterator[str]) -> Any:
    """A byte-level BPE (GPT-2's scheme: every byte is a token, so any text encodes) with <|endoftext|>."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = RustTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load(record: dict[str, Any], folder: Path | str) -> Tokenizer:
    """The tokenizer a prepared corpus's meta.json records (its "tokenizer" entry), from the corpus folder."""
    kind, spec = record.get("kind"), record.get("spec", "?")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "tiktoken":
        return TiktokenTokenizer(spec.removeprefix("tiktoken:"))
    if kind == "tokenizers" and record.get("file"):
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(folder) / record["file"]
        try:
            return HFTokenizer(RustTokenizer.from_file(str(path)), spec)
        except Exception as exc:  # noqa: BLE001
            raise ModexpError(f"the corpus's tokenizer {path} does not load ({first_words(exc)})") from None
    raise ModexpError(f"the corpus in {folder} records a tokenizer modexp cannot load: {record}")


def for_data(name: str, path: str | None) -> Tokenizer | None:
    """The tokenizer of a run's data settings: bytes for the byte-level corpora, the recorded one for a
    corpus `modexp prepare` wrote, None for raw shards (their tokenizer is not known)."""
    if name in ("stdlib", "text"):
        return ByteTokenizer()
    from .data import prepared_meta

    meta = prepared_meta(path)
    return load(meta["tokenizer"], Path(path).expanduser()) if meta else None


def for_run(run_dir: Path, vocab_size: int) -> Tokenizer:
    """The tokenizer a run trained with, from its config.yaml's data settings; refuses when unknown."""
    import yaml

    from .rundir import read_text

    config = Path(run_dir) / "config.yaml"
    data = None
    if config.is_file():  # read as data: no resolvers, no FIFO opened
        try:
            loaded = yaml.safe_load(read_text(config))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ModexpError(
                f"{config} does not parse ({first_words(exc)}): modexp cannot find the run's tokenizer"
            ) from None
        data = loaded.get("data") if isinstance(loaded, dict) else None
        data = data if isinstance(data, dict) else {}
    if data is None:  # a bare checkpoint folder: only a byte-level model can be read without its data
        tok = ByteTokenizer() if vocab_size == 256 else None
        where = f"{run_dir} has no config.yaml"
    else:
        path = data.get("path")
        tok = for_data(str(data.get("name")), path if isinstance(path, str) else None)
        where = f"its data ({data.get('name')} at {data.get('path')}) has no meta.json naming a tokenizer"
    if tok is None:
        raise ModexpError(
            f"the model in {run_dir} has vocab_size={vocab_size} and {where}: modexp cannot decode its tokens; "
            "train on a corpus made by modexp prepare, which records its tokenizer"
        )
    if tok.vocab_size > vocab_size:
        raise ModexpError(
            f"the model in {run_dir} has vocab_size={vocab_size} but its tokenizer ({tok.spec}) has "
            f"{tok.vocab_size} tokens: the corpus at its data.path was prepared again with another tokenizer"
        )
    return tok
