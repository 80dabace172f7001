"""Our tasks and mixtures as SeqIO Tasks and Mixtures, for T5X-style users (data layer only).

Importing this module hides accelerators from TensorFlow, mirrors every task and mixture already
in our registry into SeqIO's registries (names as ours with "/" and "-" turned into ".", see
`seqio_name`), and keeps mirroring later registrations. A SeqIO task
reads our deterministic prompts through `seqio.FunctionDataSource` (example i of the dataset is
our example at index i; SeqIO shards it by example, i.e. host k reads k, k + n, ...), tokenizes
with the chosen vocabulary and appends EOS, so its tokens equal our encoder-decoder pipeline's.
Evaluation tasks expand each example into one row per option ("idx", "is_correct") for scoring,
and carry `rank_classification_accuracy`, a score metric over those rows.
"""
from __future__ import annotations

import itertools
import re
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

tf.config.set_visible_devices([], "GPU")

import seqio  # noqa: E402

from symbol_tuning.data import vocabularies as ours  # noqa: E402
from symbol_tuning.data.task_registry import Mixture, MixtureRegistry, PromptTask, TaskRegistry, add_listener  # noqa: E402

_DEFAULT = {"vocabulary": ours.ByteVocabulary()}


class HFSeqioVocabulary(seqio.Vocabulary):
    """A seqio.Vocabulary over our HF `tokenizers` vocabulary (tokenisation runs in numpy_function)."""

    def __init__(self, vocab: ours.HFTokenizerVocabulary):
        self._vocab = vocab
        super().__init__(extra_ids=0)

    @property
    def eos_id(self) -> int:
        return self._vocab.eos_id

    @property
    def pad_id(self) -> int:
        return self._vocab.pad_id

    @property
    def unk_id(self) -> int | None:
        return self._vocab.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self._vocab.vocab_size

    def _encode(self, s: str) -> Sequence[int]:
        return self._vocab.encode(s)

    def _decode(self, ids) -> str:
        return self._vocab.decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def enc(x):
            text = np.asarray(x).item()
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            return self._vocab.encode_np(text).astype(np.int32)
        out = tf.numpy_function(enc, [s], tf.int32, stateful=False)
        out.set_shape([None])
        return out

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.numpy_function(lambda x: self._vocab.decode(x.tolist()).encode("utf-8"), [ids], tf.string)

    def __eq__(self, other) -> bool:
        return isinstance(other, HFSeqioVocabulary) and other._vocab.name == self._vocab.name


def seqio_vocabulary(vocab: ours.Vocabulary) -> seqio.Vocabulary:
    """The SeqIO vocabulary that tokenizes exactly as `vocab` does."""
    if isinstance(vocab, ours.ByteVocabulary):
        return seqio.ByteVocabulary(extra_ids=vocab.extra_ids)
    if isinstance(vocab, ours.SentencePieceVocabulary):
        return seqio.SentencePieceVocabulary(vocab.model_file, extra_ids=vocab.extra_ids)
    if isinstance(vocab, ours.HFTokenizerVocabulary):
        return HFSeqioVocabulary(vocab)
    raise TypeError(f"no SeqIO adapter for vocabulary {vocab!r}")


def set_default_vocabulary(vocab: ours.Vocabulary) -> None:
    """Vocabulary for tasks mirrored from now on (bytes unless changed)."""
    _DEFAULT["vocabulary"] = vocab


_SIGNATURE = {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string),
              "options": tf.TensorSpec([None], tf.string), "answer": tf.TensorSpec([], tf.int32),
              "index": tf.TensorSpec([], tf.int64), "dataset": tf.TensorSpec([], tf.string)}


def _dataset_fn(task: PromptTask):
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        prompt_seed = 0 if seed is None else int(seed)
        size = task.size() if task.kind == "eval" else task.num_examples
        indices = range(size) if size is not None else itertools.count()

        def gen():
            for i in indices:
                ex = task.example(i, prompt_seed)
                yield {"inputs": ex["inputs"], "targets": ex["targets"],
                       "options": np.asarray(ex.get("options", (ex["targets"],)), dtype=object),
                       "answer": np.int32(ex.get("answer", 0)), "index": np.int64(ex.get("index", i)),
                       "dataset": str(ex.get("dataset", task.name))}
        return tf.data.Dataset.from_generator(gen, output_signature=_SIGNATURE)
    return dataset_fn


def expand_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """One row per option: targets = option k, idx = example index, is_correct = (k == answer)."""
    def rows(ex):
        k = tf.shape(ex["options"])[0]
        return tf.data.Dataset.from_tensor_slices({
            "inputs": tf.fill([k], ex["inputs"]), "targets": ex["options"],
            "idx": tf.fill([k], ex["index"]), "is_correct": tf.equal(tf.range(k), ex["answer"])})
    return dataset.flat_map(rows)


def rank_postprocessor(output, example=None, is_target: bool = False):
    """For targets, (example index, is_correct) so the score metric can group options."""
    if is_target and example is not None:
        return int(example["idx"]), bool(example["is_correct"])
    return output


def rank_classification_accuracy(targets: Sequence[tuple[int, bool]], scores: Sequence[float]) -> Mapping[str, float]:
    """Rank-classification accuracy (%) from per-option scores: an example counts as right when its
    highest-scoring option is the correct one (SeqIO score metric signature)."""
    if len(targets) != len(scores):
        raise ValueError(f"rank_classification_accuracy: {len(targets)} targets but {len(scores)} scores")
    best: dict[int, tuple[float, bool]] = {}
    for (idx, correct), score in zip(targets, scores):
        score = float(np.sum(score))
        if idx not in best or score > best[idx][0]:
            best[idx] = (score, bool(correct))
    if not best:
        raise ValueError("rank_classification_accuracy: no examples")
    return {"accuracy": 100.0 * sum(c for _, c in best.values()) / len(best)}


def seqio_name(name: str) -> str:
    """SeqIO's name for our task or mixture: SeqIO allows only [\\w.:#], so "/" and "-" become "."."""
    return re.sub(r"[^\w.:#]", ".", name)


def to_seqio_task(task: PromptTask, vocabulary: ours.Vocabulary | None = None) -> seqio.Task:
    """A seqio.Task reading `task`'s prompts, tokenized with `vocabulary` (default bytes) + EOS."""
    vocab = seqio_vocabulary(vocabulary or _DEFAULT["vocabulary"])
    features = {"inputs": seqio.Feature(vocab, add_eos=True), "targets": seqio.Feature(vocab, add_eos=True)}
    pre = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
    kwargs = {}
    if task.kind == "eval":
        pre = [expand_options] + pre
        kwargs = dict(postprocess_fn=rank_postprocessor, metric_fns=[rank_classification_accuracy])
    source = seqio.FunctionDataSource(_dataset_fn(task), splits=("train", "validation"))
    return seqio.Task(seqio_name(task.name), source=source, output_features=features, preprocessors=pre, **kwargs)


def register_task(task: PromptTask, vocabulary: ours.Vocabulary | None = None) -> seqio.Task:
    """Register (or replace) `task` in SeqIO's TaskRegistry."""
    name = seqio_name(task.name)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add_provider(name, to_seqio_task(task, vocabulary))
    return seqio.TaskRegistry.get(name)


def register_mixture(mixture: Mixture) -> seqio.Mixture:
    """Register (or replace) `mixture` in SeqIO's MixtureRegistry with the same rates."""
    name = seqio_name(mixture.name)
    seqio.MixtureRegistry.remove(name)
    entries = [(seqio_name(task), rate) for task, rate in mixture.entries if rate > 0]
    return seqio.MixtureRegistry.add(name, entries)


def _mirror(item: PromptTask | Mixture) -> None:
    if isinstance(item, Mixture):
        register_mixture(item)
    else:
        register_task(item)


def sync() -> None:
    """Mirror every registered task, then every mixture, into SeqIO."""
    for name in TaskRegistry.names():
        register_task(TaskRegistry.get(name))
    for name in MixtureRegistry.names():
        register_mixture(MixtureRegistry.get(name))


sync()
add_listener(_mirror)
