"""Keeping held-out evaluation data out of every tuning mixture.

Two checks: by id (a dataset name or HF id on both sides, or a tuning name that is one of the paper's
evaluation datasets) and by text (any input text shared after normalisation: case, whitespace and
punctuation at the ends are ignored, so a re-cased or re-spaced copy of an evaluation text is caught).
"""
from __future__ import annotations

import hashlib
import re
import string
from typing import Iterable, Sequence

from symbol_tuning.data.examples import ClassificationData, GenerativeData, texts_of
from symbol_tuning.data.specs import DatasetSpec, all_specs

Data = ClassificationData | GenerativeData
_SPACES = re.compile(r"\s+")
_END_CHARS = string.punctuation + string.whitespace + "\u201c\u201d\u2018\u2019\u2026\u00bf\u00a1"
_SHOW = 80


class ContaminationError(ValueError):
    """Evaluation data (by id or by text) would enter tuning."""


def normalize_text(text: str) -> str:
    """Lowercase, whitespace runs collapsed to one space, punctuation and spaces stripped at both ends."""
    return _SPACES.sub(" ", text.lower()).strip(_END_CHARS)


def normalized_hash(text: str) -> str:
    """SHA-1 hex digest of `normalize_text(text)`: the key texts are compared by."""
    return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()


def _norm_id(dataset_id: str) -> str:
    return dataset_id.strip().lower().replace(":", "/")


def _spec_ids(spec: DatasetSpec) -> set[str]:
    """Every id a spec is known by: its name, 'path/config', the same without the hub owner, and for
    evaluation sets the bare config too (RAFT's 'ade_corpus_v2' is also a dataset of its own)."""
    ids = {spec.name, spec.hf_id}
    if spec.role == "evaluation" and spec.hf_config:
        ids.add(spec.hf_config)
    if "/" in spec.hf_path:
        owner_less = spec.hf_path.split("/", 1)[1]
        ids.add(f"{owner_less}/{spec.hf_config}" if spec.hf_config else owner_less)
    return {_norm_id(i) for i in ids}


def _expand(ids: Iterable[str]) -> dict[str, str]:
    """Normalised id -> the id as given, with every registered spec's aliases added."""
    by_alias = {alias: spec for spec in all_specs().values() for alias in _spec_ids(spec)}
    out: dict[str, str] = {}
    for given in ids:
        out.setdefault(_norm_id(given), given)
        spec = by_alias.get(_norm_id(given))
        if spec is not None:
            for alias in _spec_ids(spec):
                out.setdefault(alias, given)
    return out


def _covers(a: str, b: str) -> bool:
    """Same id, or one is a whole collection that holds the other ('x/tweet_eval' holds 'x/tweet_eval/hate')."""
    return a == b or b.startswith(a + "/") or a.startswith(b + "/")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SHOW else text[:_SHOW - 3] + "..."


def check_no_overlap(tuning: Sequence[Data], evaluation: Sequence[Data], *, tuning_ids: Sequence[str] = (),
                     evaluation_ids: Sequence[str] = ()) -> None:
    """Raise ContaminationError when a dataset id is on both sides or any input text is shared.

    Ids are the datasets' names plus the extra ids given (names or HF ids, 'path/config' or
    'path:config'); registered specs bring their HF ids along.
    """
    t_ids = _expand([d.name for d in tuning] + list(tuning_ids))
    e_ids = _expand([d.name for d in evaluation] + list(evaluation_ids))
    clashes = sorted({f"{t_ids[a]!r} ~ {e_ids[b]!r}" for a in t_ids for b in e_ids if _covers(a, b)})
    if clashes:
        raise ContaminationError(f"dataset ids on both the tuning and the evaluation side: {', '.join(clashes)}")
    eval_hashes: dict[str, tuple[str, str]] = {}
    for data in evaluation:
        for text in texts_of([data]):
            eval_hashes.setdefault(normalized_hash(text), (data.name, text))
    problems: list[str] = []
    for data in tuning:
        shared: dict[str, list[str]] = {}
        for text in texts_of([data]):
            hit = eval_hashes.get(normalized_hash(text))
            if hit is not None:
                shared.setdefault(hit[0], []).append(text)
        for eval_name, texts in sorted(shared.items()):
            problems.append(f"tuning {data.name!r} shares {len(set(texts))} text(s) with evaluation {eval_name!r}, "
                            f"e.g. {_short(texts[0])!r}")
    if problems:
        raise ContaminationError("evaluation texts found in tuning data: " + "; ".join(problems))


def assert_tuning_names_allowed(names: Iterable[str]) -> None:
    """Reject any tuning dataset name or HF id that is (or holds) an evaluation dataset."""
    eval_ids = {alias: spec.name for spec in all_specs("evaluation").values() for alias in _spec_ids(spec)}
    bad = sorted({f"{name!r} (evaluation dataset {eval_ids[alias]!r})" for name in names for alias in eval_ids
                  if _covers(_norm_id(name), alias)})
    if bad:
        raise ContaminationError(f"evaluation datasets can never be tuned on: {', '.join(bad)}")
