"""One vocabulary interface for every model family: bytes (embedded default), SentencePiece (T5 /
Flan-T5) and HF `tokenizers` JSON (Llama-family).

`encode` never adds BOS or EOS on its own: the data pipeline appends EOS and, for decoders that need
it, asks for BOS with `add_bos=True`. `decode` stops at the first EOS and skips padding, so it reads
model outputs directly. `name` is a stable description (scheme, path and a content hash) for cache
keys and logs. No TensorFlow / SeqIO here: the ids match SeqIO's vocabularies by construction.
"""
from __future__ import annotations

import abc
import functools
import hashlib
import json
import os
import pathlib
from typing import Sequence

import numpy as np

_BYTE_OFFSET = 3  # pad 0, eos 1, unk 2, then byte b -> b + 3 (as seqio.ByteVocabulary / ByT5)
_HF_EOS_CANDIDATES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|eot_id|>")
_HF_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>")


class Vocabulary(abc.ABC):
    """Text <-> token ids. pad_id is 0 unless a tokenizer says otherwise; eos_id is always set."""

    name: str
    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int | None = None
    unk_id: int | None = None

    @abc.abstractmethod
    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text` without EOS; BOS first only when `add_bos` is requested."""

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        """Token ids of many texts (implementations override this with a batched fast path)."""
        return [self.encode(t, add_bos=add_bos) for t in texts]

    def encode_np(self, text: str, *, add_bos: bool = False) -> np.ndarray:
        """Token ids of `text` as an int32 array (what the packer consumes)."""
        return np.asarray(self.encode(text, add_bos=add_bos), dtype=np.int32)

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` up to the first EOS, skipping padding and other special ids."""

    def _bos_prefix(self, add_bos: bool) -> list[int]:
        if not add_bos:
            return []
        if self.bos_id is None:
            raise ValueError(f"vocabulary {self.name!r} has no BOS token; add_bos=True is not possible")
        return [self.bos_id]

    def _until_eos(self, ids: Sequence[int]) -> list[int]:
        out = [int(i) for i in np.asarray(ids).reshape(-1).tolist()]
        if self.eos_id in out:
            out = out[:out.index(self.eos_id)]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


class ByteVocabulary(Vocabulary):
    """UTF-8 bytes with seqio.ByteVocabulary's ids: pad 0, eos 1, unk 2, byte b -> b + 3.

    `extra_ids` adds sentinel ids after the 259 byte ids (as SeqIO does); decode drops them.
    """

    pad_id = 0
    eos_id = 1
    unk_id = 2

    def __init__(self, extra_ids: int = 0):
        if extra_ids < 0:
            raise ValueError(f"ByteVocabulary: extra_ids must be >= 0, got {extra_ids}")
        self.extra_ids = int(extra_ids)
        self.vocab_size = 256 + _BYTE_OFFSET + self.extra_ids
        self.name = "bytes" if not self.extra_ids else f"bytes:extra_ids={self.extra_ids}"

    def encode_np(self, text: str, *, add_bos: bool = False) -> np.ndarray:
        self._bos_prefix(add_bos)
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + _BYTE_OFFSET

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        return self.encode_np(text, add_bos=add_bos).tolist()

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        self._bos_prefix(add_bos)
        if not texts:
            return []
        raw = [t.encode("utf-8") for t in texts]
        flat = np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.int32) + _BYTE_OFFSET
        ends = np.cumsum([len(r) for r in raw])
        return [part.tolist() for part in np.split(flat, ends[:-1])]

    def decode(self, ids: Sequence[int]) -> str:
        arr = np.asarray(self._until_eos(ids), dtype=np.int64)
        arr = arr[(arr >= _BYTE_OFFSET) & (arr < 256 + _BYTE_OFFSET)] - _BYTE_OFFSET
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="ignore")


def _file_digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _existing_file(path: str | os.PathLike, what: str) -> pathlib.Path:
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {str(p)!r}")
    return p


def _with_extra_ids(model_proto: bytes, extra_ids: int) -> bytes:
    """The SentencePiece model with T5's sentinel pieces appended, last sentinel first (as SeqIO)."""
    if not extra_ids:
        return model_proto
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    model = spm_pb2.ModelProto.FromString(model_proto)
    for i in reversed(range(extra_ids)):
        model.pieces.add(piece=f"\u2581<extra_id_{i}>", score=0.0,
                         type=spm_pb2.ModelProto.SentencePiece.USER_DEFINED)
    return model.SerializeToString()


class SentencePieceVocabulary(Vocabulary):
    """A SentencePiece model (T5 / Flan-T5: pad 0, eos 1, unk 2), with optional T5 sentinel extra_ids.

    Ids match seqio.SentencePieceVocabulary's for the same model file and extra_ids (Flan-T5: 100).
    """

    def __init__(self, model_file: str | os.PathLike, *, extra_ids: int = 0):
        import sentencepiece

        path = _existing_file(model_file, "SentencePiece model")
        if extra_ids < 0:
            raise ValueError(f"SentencePiece model {str(path)!r}: extra_ids must be >= 0, got {extra_ids}")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(
                model_proto=_with_extra_ids(path.read_bytes(), int(extra_ids)))
        except Exception as e:  # sentencepiece/protobuf raise assorted errors with terse messages
            raise ValueError(f"SentencePiece model file {str(path)!r} is unreadable: {e}") from e
        self.model_file = str(path)
        self.extra_ids = int(extra_ids)
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0
        if self._sp.eos_id() < 0:
            raise ValueError(f"SentencePiece model {str(path)!r} defines no EOS piece (eos_id=-1)")
        self.eos_id = self._sp.eos_id()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.unk_id = self._sp.unk_id() if self._sp.unk_id() >= 0 else None
        extra = f":extra_ids={self.extra_ids}" if self.extra_ids else ""
        self.name = f"spm:{self.model_file}#{_file_digest(path)}{extra}"

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        return self._bos_prefix(add_bos) + self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        prefix = self._bos_prefix(add_bos)
        return [prefix + ids for ids in self._sp.encode(list(texts), out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        unk = self.unk_id if self.unk_id is not None else self.pad_id
        clean = [unk if i >= self.vocab_size else i for i in self._until_eos(ids) if i != self.pad_id]
        return self._sp.decode(clean)


def _hf_config_token(tokenizer_dir: pathlib.Path, key: str) -> str | None:
    """The `key` token ("eos_token", ...) from a tokenizer_config.json beside tokenizer.json, if any."""
    config = tokenizer_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer config {str(config)!r} is unreadable: {e}") from e
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizerVocabulary(Vocabulary):
    """An HF `tokenizers` tokenizer.json (Llama-family); `tokenizer_file` may be its directory.

    EOS comes from `eos_token`, else tokenizer_config.json beside the file, else a known EOS token
    ("</s>", "<|end_of_text|>", ...). BOS likewise (None when there is none). pad_id defaults to the
    config's pad token, else 0. `encode` never lets the tokenizer's post-processor add specials.
    """

    def __init__(self, tokenizer_file: str | os.PathLike, *, eos_token: str | None = None,
                 pad_id: int | None = None, bos_token: str | None = None):
        import tokenizers

        path = pathlib.Path(tokenizer_file).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        path = _existing_file(path, "HF tokenizer")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"HF tokenizer file {str(path)!r} is unreadable: {e}") from e
        self.tokenizer_file = str(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._token_id(eos_token or _hf_config_token(path.parent, "eos_token"),
                                     _HF_EOS_CANDIDATES, "eos_token", required=eos_token is not None)
        if self.eos_id is None:
            raise ValueError(f"HF tokenizer {str(path)!r}: no EOS token found among {_HF_EOS_CANDIDATES}; "
                             "pass eos_token=")
        self.bos_id = self._token_id(bos_token or _hf_config_token(path.parent, "bos_token"),
                                     _HF_BOS_CANDIDATES, "bos_token", required=bos_token is not None)
        if pad_id is None:
            pad_id = self._token_id(_hf_config_token(path.parent, "pad_token"), (), "pad_token", required=False)
        self.pad_id = 0 if pad_id is None else int(pad_id)
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"HF tokenizer {str(path)!r}: pad_id {self.pad_id} is outside [0, {self.vocab_size})")
        self.name = f"hf:{self.tokenizer_file}#{_file_digest(path)}"

    def _token_id(self, token: str | None, candidates: Sequence[str], what: str, *,
                  required: bool) -> int | None:
        if token is not None:
            tid = self._tok.token_to_id(token)
            if tid is None and required:
                raise ValueError(f"HF tokenizer {self.tokenizer_file!r}: {what} {token!r} is not in the vocabulary")
            if tid is not None:
                return tid
        for cand in candidates:
            tid = self._tok.token_to_id(cand)
            if tid is not None:
                return tid
        return None

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        return self._bos_prefix(add_bos) + self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        prefix = self._bos_prefix(add_bos)
        return [prefix + enc.ids for enc in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        clean = [i for i in self._until_eos(ids) if i != self.pad_id and 0 <= i < self.vocab_size]
        return self._tok.decode(clean, skip_special_tokens=True)


WORD_LEVEL_SPECIALS = ("<pad>", "</s>", "<unk>")


def write_word_level_tokenizer(words: Sequence[str], directory: str | os.PathLike) -> pathlib.Path:
    """Write an HF `tokenizers` WordLevel tokenizer over `words` (plus <pad> 0, </s> 1, <unk> 2) to
    `directory`/tokenizer.json, with a tokenizer_config.json naming its specials; returns the file.

    Texts are split on whitespace and punctuation runs (`Whitespace` pre-tokenizer), so "Output:" is
    two tokens. Written atomically (a temporary file, then a rename), so a reader never sees half a file.
    """
    import tokenizers
    from tokenizers import models, pre_tokenizers

    words = list(dict.fromkeys(words))
    clash = sorted(set(words) & set(WORD_LEVEL_SPECIALS))
    if clash:
        raise ValueError(f"word-level vocabulary: words {clash} clash with the special tokens {WORD_LEVEL_SPECIALS}")
    vocab = {tok: i for i, tok in enumerate(list(WORD_LEVEL_SPECIALS) + words)}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "bos_token": None}
    for name, text in (("tokenizer_config.json", json.dumps(config, indent=2)), ("tokenizer.json", tok.to_str())):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
    return out / "tokenizer.json"


@functools.lru_cache(maxsize=16)
def get_vocabulary(spec: str) -> Vocabulary:
    """A vocabulary from a spec string: "bytes", "spm:<model file>" or "hf:<tokenizer.json or dir>"."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"vocabulary spec {spec!r} is empty; use 'bytes', 'spm:<path>' or 'hf:<path>'")
    if spec == "bytes":
        return ByteVocabulary()
    scheme, sep, path = spec.partition(":")
    if sep and scheme in ("spm", "hf"):
        if not path:
            raise ValueError(f"vocabulary spec {spec!r} names no file after {scheme + ':'!r}")
        return SentencePieceVocabulary(path) if scheme == "spm" else HFTokenizerVocabulary(path)
    raise ValueError(f"unknown vocabulary spec {spec!r}; use 'bytes', 'spm:<path>' or 'hf:<path>'")
