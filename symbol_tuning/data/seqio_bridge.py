"""Our tasks and mixtures as SeqIO Tasks and Mixtures, for T5X-style users (data layer only).

Importing this module hides accelerators from TensorFlow, mirrors every task and mixture already
in our registry into SeqIO's registries under the same names (our names are valid SeqIO names; the one
renaming is a dataset's name inside its task name, see task_registry.registry_name), and keeps mirroring
later registrations. A SeqIO task reads example indices through `seqio.FunctionDataSource` (example i is
our example at index i; SeqIO shards by example, i.e. host k reads k, k + n, ...); its first preprocessor
builds each prompt for the `sequence_length["inputs"]` SeqIO passes (exemplars dropped to fit, never the
query), so SeqIO's trimming never cuts anything; then it tokenizes with the chosen vocabulary and appends
EOS, so its tokens equal our encoder-decoder pipeline's. Splits: see `task_splits`.
Evaluation tasks expand each example into one row per option ("idx", "is_correct") for scoring,
and carry `rank_classification_accuracy`, a score metric over those rows.

The other direction: `adopt(name)` makes any name in SeqIO's registries (a plain seqio.MixtureRegistry.add
mixture over our tasks, a user's own SeqIO task with inputs/targets) trainable by `symbol-tuning train`
through our batch stream.
"""
from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

tf.config.set_visible_devices([], "GPU")

import seqio  # noqa: E402

from symbol_tuning.data import vocabularies as ours  # noqa: E402
from symbol_tuning.data.task_registry import (  # noqa: E402
    Mixture,
    MixtureRegistry,
    PromptBudget,
    PromptTask,
    TaskRegistry,
    add_listener,
    get_task_or_mixture,
)
from symbol_tuning.data.token_layout import token_layout, token_length_fn  # noqa: E402

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


_PROMPT_SIGNATURE = {"index": tf.TensorSpec([], tf.int64), "prompt_seed": tf.TensorSpec([], tf.int64),
                     "split": tf.TensorSpec([], tf.string)}


def task_splits(task: PromptTask) -> tuple[str, ...]:
    """The SeqIO splits of our task: an evaluation task's queries are its "validation" split; a tuning
    task has "train", plus "validation" where its source has a validation split (task.validation)."""
    if task.kind == "eval":
        return ("validation",)
    return ("train", "validation") if task.validation is not None else ("train",)


def _split_task(task: PromptTask, split: str) -> PromptTask:
    if split not in task_splits(task):
        raise ValueError(f"task {task.name!r} has no {split!r} split; it has {task_splits(task)}")
    return task.validation if (split == "validation" and task.kind != "eval") else task


def _dataset_fn(task: PromptTask):
    """The source: (index, prompt seed) of each example; prompts are built by `_prompt_preprocessor`,
    which knows the sequence length SeqIO asks for."""
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        prompt_seed = 0 if seed is None else int(seed)
        source = _split_task(task, split)
        # A tuning task's train split wraps (endless when its size is not known without loading).
        size = source.size() if (source.kind == "eval" or split == "validation") else source.num_examples
        indices = range(size) if size is not None else itertools.count()

        def gen():
            for i in indices:
                yield {"index": np.int64(i), "prompt_seed": np.int64(prompt_seed), "split": split}
        return tf.data.Dataset.from_generator(gen, output_signature=_PROMPT_SIGNATURE)
    return dataset_fn


def prompt_budget(sequence_length: Mapping[str, int | None] | None, vocabulary: ours.Vocabulary
                  ) -> PromptBudget | None:
    """The budget that makes a prompt fit `sequence_length["inputs"]` tokens of `vocabulary` with EOS, so
    SeqIO's trimming never has anything to cut (None: no length asked, the task's default budget)."""
    length = (sequence_length or {}).get("inputs")
    if length is None:
        return None
    reserved = token_layout("encoder_decoder", vocabulary).reserved
    return PromptBudget(max_input_length=int(length) - reserved, length_fn=token_length_fn(vocabulary))


def _prompt_preprocessor(task: PromptTask, vocabulary: ours.Vocabulary):
    """A SeqIO preprocessor building each example's prompt for the requested input length."""
    def build_prompts(dataset: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
        budget = prompt_budget(sequence_length, vocabulary)

        def make(index, prompt_seed, split):
            source = _split_task(task, split.numpy().decode())
            ex = source.example(int(index.numpy()), int(prompt_seed.numpy()), budget)
            options = np.asarray([o.encode("utf-8") for o in ex.get("options", (ex["targets"],))], dtype=object)
            return (ex["inputs"].encode("utf-8"), ex["targets"].encode("utf-8"), options,
                    np.int32(ex.get("answer", 0)), np.int64(ex.get("index", int(index.numpy()))),
                    str(ex.get("dataset", task.name)).encode("utf-8"))

        def fn(ex):
            out = tf.py_function(make, [ex["index"], ex["prompt_seed"], ex["split"]],
                                 [tf.string, tf.string, tf.string, tf.int32, tf.int64, tf.string])
            for tensor, shape in zip(out, ([], [], [None], [], [], [])):
                tensor.set_shape(shape)
            return dict(zip(("inputs", "targets", "options", "answer", "index", "dataset"), out))
        return dataset.map(fn, num_parallel_calls=1, deterministic=True)
    return build_prompts


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


def to_seqio_task(task: PromptTask, vocabulary: ours.Vocabulary | None = None) -> seqio.Task:
    """A seqio.Task of the same name reading `task`'s prompts, built for the sequence length SeqIO asks for
    and tokenized with `vocabulary` (default bytes) + EOS."""
    our_vocab = vocabulary or _DEFAULT["vocabulary"]
    vocab = seqio_vocabulary(our_vocab)
    features = {"inputs": seqio.Feature(vocab, add_eos=True), "targets": seqio.Feature(vocab, add_eos=True)}
    pre = [_prompt_preprocessor(task, our_vocab)]
    kwargs = {}
    if task.kind == "eval":
        pre.append(expand_options)
        kwargs = dict(postprocess_fn=rank_postprocessor, metric_fns=[rank_classification_accuracy])
    pre += [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
    source = seqio.FunctionDataSource(_dataset_fn(task), splits=task_splits(task))
    return seqio.Task(task.name, source=source, output_features=features, preprocessors=pre, **kwargs)


# Names this module put into SeqIO (mirrored from ours), and names of SeqIO's that `adopt` put into ours.
_MIRRORED: set[str] = set()
_ADOPTED: set[str] = set()


def _in_seqio(name: str) -> bool:
    return name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()


def _refuse_foreign(name: str, overwrite: bool) -> None:
    """Refuse registering `name` of ours over a SeqIO task or mixture someone else registered."""
    if _in_seqio(name) and name not in _MIRRORED and name not in _ADOPTED and not overwrite:
        kind = "mixture" if name in seqio.MixtureRegistry.names() else "task"
        raise ValueError(f"{name!r} is already a SeqIO {kind} registered outside symbol_tuning "
                         f"({seqio.get_mixture_or_task(name)!r}); pass overwrite=True to replace it in both "
                         "registries, or choose another name")


def register_task(task: PromptTask, vocabulary: ours.Vocabulary | None = None) -> seqio.Task:
    """Register (or replace) `task` in SeqIO's TaskRegistry under its own name."""
    seqio.TaskRegistry.remove(task.name)
    seqio.MixtureRegistry.remove(task.name)
    seqio.TaskRegistry.add_provider(task.name, to_seqio_task(task, vocabulary))
    _MIRRORED.add(task.name)
    return seqio.TaskRegistry.get(task.name)


def register_mixture(mixture: Mixture) -> seqio.Mixture:
    """Register (or replace) `mixture` in SeqIO's MixtureRegistry under its own name with the same rates."""
    seqio.MixtureRegistry.remove(mixture.name)
    seqio.TaskRegistry.remove(mixture.name)
    entries = [(task, rate) for task, rate in mixture.entries if rate > 0]
    out = seqio.MixtureRegistry.add(mixture.name, entries)
    _MIRRORED.add(mixture.name)
    return out


def _mirror(item: PromptTask | Mixture) -> None:
    if item.name in _ADOPTED:
        return  # it came from SeqIO: the user's SeqIO registration stays as it is
    if isinstance(item, Mixture):
        register_mixture(item)
    else:
        register_task(item)


def sync() -> None:
    """Mirror every registered task, then every mixture, into SeqIO."""
    for name in TaskRegistry.names():
        _mirror(TaskRegistry.get(name))
    for name in MixtureRegistry.names():
        _mirror(MixtureRegistry.get(name))


# -- SeqIO names into our batch stream ------------------------------------------------------------------
def _text(ex: Mapping[str, Any], key: str, vocab: seqio.Vocabulary | None, task: str) -> str:
    if f"{key}_pretokenized" in ex:
        value = ex[f"{key}_pretokenized"]
    elif key in ex:
        value = ex[key]
        if getattr(value, "dtype", None) is not None and np.issubdtype(value.dtype, np.integer):
            if vocab is None:
                raise ValueError(f"SeqIO task {task!r}: feature {key!r} is tokenized and has no vocabulary")
            value = vocab.decode([int(t) for t in value.tolist() if t != vocab.eos_id])
    else:
        raise ValueError(f"SeqIO task {task!r} yields no {key!r} feature (it has {sorted(ex)}); symbol-tuning "
                         "trains on tasks with 'inputs' and 'targets'")
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _foreign_task(task: seqio.Task) -> PromptTask:
    """A user's SeqIO task as one of our instruction tasks: example i is the i-th (inputs, targets) text pair
    of its "train" split in order (shuffle off, read once and kept in memory), re-tokenized by our stream."""
    cache: list[tuple[str, str]] = []
    state: dict[str, Any] = {"it": None, "done": False}
    vocabs = {k: f.vocabulary for k, f in task.output_features.items()}

    def fill(upto: int | None) -> None:
        if state["it"] is None:
            ds = task.get_dataset(sequence_length=None, split="train", shuffle=False, num_epochs=1)
            state["it"] = ds.as_numpy_iterator()
        while not state["done"] and (upto is None or len(cache) <= upto):
            try:
                ex = next(state["it"])
            except StopIteration:
                state["done"] = True
                break
            cache.append((_text(ex, "inputs", vocabs.get("inputs"), task.name),
                          _text(ex, "targets", vocabs.get("targets"), task.name)))
        if state["done"] and not cache:
            raise ValueError(f"SeqIO task {task.name!r}: its 'train' split is empty")

    def fn(index: int, seed: int, budget: PromptBudget | None = None) -> dict:
        fill(index)
        inputs, targets = cache[index % len(cache)] if state["done"] else cache[index]
        return {"inputs": inputs, "targets": targets, "options": (targets,), "answer": 0, "dataset": task.name,
                "index": int(index)}

    def size() -> int:
        fill(None)
        return len(cache)

    return PromptTask(task.name, None, fn, "instruction", size_fn=size, metadata={"origin": "a SeqIO task"})


def adopt(name: str) -> str:
    """Make a name registered in SeqIO trainable by our batch stream, and return it.

    Our own names pass through. A SeqIO mixture (added with plain `seqio.MixtureRegistry.add`, sub-mixtures
    and rate functions allowed) becomes our mixture of its leaf tasks at SeqIO's effective rates; each leaf
    that is ours is used as is (prompts fitted to the run's feature lengths), any other SeqIO task becomes
    an instruction task over its (inputs, targets) texts (`_foreign_task`). The user's SeqIO entries are not
    touched. KeyError naming close names when SeqIO does not know `name` either.
    """
    if name in TaskRegistry.names() or name in MixtureRegistry.names():
        return name
    if not _in_seqio(name):
        get_task_or_mixture(name)  # KeyError naming our close names
    provider = seqio.get_mixture_or_task(name)
    if isinstance(provider, seqio.Mixture):
        entries = []
        for task in provider.tasks:
            entries.append((adopt(task.name), float(provider.get_rate(task))))
        _ADOPTED.add(name)
        MixtureRegistry.add(name, entries)
    else:
        _ADOPTED.add(name)
        TaskRegistry.add(_foreign_task(provider))
    return name


sync()
add_listener(_mirror, check=_refuse_foreign)
