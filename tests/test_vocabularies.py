"""Vocabularies: ids equal SeqIO's (bytes, SentencePiece) and transformers' (HF tokenizer.json)."""
import json
import time

import numpy as np
import pytest

from symbol_tuning.data import vocabularies as V

TEXTS = [
    "Hello, world!",
    "Symbol tuning: 42 -> foo",
    "naïve café, Zürich — ünïcödé ✓ 日本語 🙂",
    "",
    "  leading and trailing spaces  ",
    "Input: the movie was great\nOutput: positive\n\nInput: dull\nOutput:",
]


def _corpus(n: int = 400) -> list[str]:
    rng = np.random.default_rng(0)
    words = ("the cat dog movie was great terrible red blue car house tree runs quickly slowly "
             "positive negative number seven eleven input output label answer question yes no").split()
    return [" ".join(words[j] for j in rng.integers(len(words), size=rng.integers(4, 12))) + "."
            for _ in range(n)]


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    import sentencepiece

    d = tmp_path_factory.mktemp("spm")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_prefix=str(d / "tiny"), vocab_size=50,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", character_coverage=1.0,
        minloglevel=2)
    return d / "tiny.model"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    d = tmp_path_factory.mktemp("hf")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # Like Llama's tokenizer.json: a post-processor that adds BOS, which encode() must not apply.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(d / "tokenizer.json"))
    return d


def test_byte_ids_equal_seqio_byte_vocabulary_on_unicode_text():
    import seqio

    ref = seqio.ByteVocabulary()
    ours = V.ByteVocabulary()
    assert (ours.vocab_size, ours.pad_id, ours.eos_id, ours.unk_id) == (ref.vocab_size, 0, ref.eos_id, ref.unk_id)
    for text in TEXTS:
        assert ours.encode(text) == list(ref.encode(text))
        assert ours.encode_np(text).dtype == np.int32
        assert ours.encode_np(text).tolist() == list(ref.encode(text))
    assert ours.encode_batch(TEXTS) == [list(ref.encode(t)) for t in TEXTS]
    assert V.ByteVocabulary(extra_ids=5).vocab_size == seqio.ByteVocabulary(extra_ids=5).vocab_size


def test_byte_decode_roundtrips_and_stops_at_eos_like_seqio():
    import seqio

    ref = seqio.ByteVocabulary()
    vocab = V.ByteVocabulary()
    for text in TEXTS:
        assert vocab.decode(vocab.encode(text)) == text
    ids = [0] + vocab.encode("abc") + [2, 300] + vocab.encode("d") + [1] + vocab.encode("after eos") + [0, 0]
    assert vocab.decode(ids) == ref.decode(ids) == "abcd"
    assert vocab.decode(np.asarray(ids, dtype=np.int32)) == "abcd"


def test_byte_encode_batch_handles_empty_list_and_add_bos_is_refused():
    vocab = V.ByteVocabulary()
    assert vocab.encode_batch([]) == []
    with pytest.raises(ValueError, match="no BOS"):
        vocab.encode("x", add_bos=True)


def test_byte_encode_speed_exceeds_2000_prompts_of_2kb_per_second():
    vocab = V.ByteVocabulary()
    prompts = [("Input: the movie was great é\nOutput: positive\n\n" * 40)[:2000] + str(i) for i in range(2000)]
    t0 = time.perf_counter()
    for p in prompts:
        vocab.encode_np(p)
    t_np = time.perf_counter() - t0
    t0 = time.perf_counter()
    vocab.encode_batch(prompts)
    t_batch = time.perf_counter() - t0
    assert t_np < 1.0 and t_batch < 1.0, (t_np, t_batch)


def test_sentencepiece_ids_equal_seqio_sentencepiece_vocabulary(spm_file):
    import seqio

    ref = seqio.SentencePieceVocabulary(str(spm_file))
    ours = V.SentencePieceVocabulary(spm_file)
    assert (ours.vocab_size, ours.pad_id, ours.eos_id, ours.bos_id) == (ref.vocab_size, 0, 1, None)
    texts = TEXTS[:3] + _corpus(20)
    for text in texts:
        assert ours.encode(text) == list(ref.encode(text))
    assert ours.encode_batch(texts) == [list(ref.encode(t)) for t in texts]
    for text in _corpus(20):
        ids = ours.encode(text)
        assert ours.decode(ids + [1, 5, 6]) == ref.decode(ids + [1, 5, 6]) == text


def test_sentencepiece_extra_ids_match_seqio_in_encode_and_decode(spm_file):
    import seqio

    ref = seqio.SentencePieceVocabulary(str(spm_file), extra_ids=10)
    ours = V.SentencePieceVocabulary(spm_file, extra_ids=10)
    assert ours.vocab_size == ref.vocab_size == 60
    ids = ours.encode("the cat") + [55, 70] + ours.encode("dog")
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.encode("the cat <extra_id_3> dog") == list(ref.encode("the cat <extra_id_3> dog"))


def test_hf_ids_equal_transformers_fast_tokenizer_without_implicit_bos(hf_dir):
    from transformers import PreTrainedTokenizerFast

    ref = PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    for source in (hf_dir, hf_dir / "tokenizer.json"):
        ours = V.HFTokenizerVocabulary(source)
        assert (ours.eos_id, ours.bos_id, ours.pad_id) == (2, 1, 0)
        assert ours.vocab_size == len(ref)
        texts = TEXTS + _corpus(20)
        for text in texts:
            assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
            assert ours.encode(text, add_bos=True) == ref.encode(text)  # the post-processor adds <s>
        assert ours.encode_batch(texts) == [ref.encode(t, add_special_tokens=False) for t in texts]
        for text in TEXTS:
            ids = ours.encode(text, add_bos=True)
            assert ours.decode(ids + [2] + ours.encode("tail")) == text


def test_hf_eos_and_pad_come_from_tokenizer_config_or_arguments(hf_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "<s>"}, "pad_token": "</s>", "bos_token": None}))
    vocab = V.HFTokenizerVocabulary(tmp_path)
    assert (vocab.eos_id, vocab.pad_id) == (1, 2)
    assert V.HFTokenizerVocabulary(tmp_path, eos_token="</s>", pad_id=0).eos_id == 2
    with pytest.raises(ValueError, match="eos_token '<nope>'"):
        V.HFTokenizerVocabulary(tmp_path, eos_token="<nope>")


def test_get_vocabulary_parses_specs_and_names_are_stable(spm_file, hf_dir):
    assert isinstance(V.get_vocabulary("bytes"), V.ByteVocabulary)
    spm = V.get_vocabulary(f"spm:{spm_file}")
    hf = V.get_vocabulary(f"hf:{hf_dir}")
    assert isinstance(spm, V.SentencePieceVocabulary) and isinstance(hf, V.HFTokenizerVocabulary)
    assert spm.name == V.SentencePieceVocabulary(spm_file).name and str(spm_file) in spm.name
    assert hf.name.startswith("hf:") and "tokenizer.json" in hf.name
    assert V.get_vocabulary("bytes").name == "bytes"


@pytest.mark.parametrize("spec", ["", "wordpiece:/x", "spm:", "byte"])
def test_get_vocabulary_rejects_bad_specs_naming_them(spec):
    with pytest.raises(ValueError, match="vocabulary spec"):
        V.get_vocabulary(spec)


def test_missing_and_unreadable_files_raise_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        V.get_vocabulary(f"spm:{tmp_path / 'missing.model'}")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        V.HFTokenizerVocabulary(tmp_path)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="bad.model"):
        V.SentencePieceVocabulary(bad)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        V.HFTokenizerVocabulary(bad_json)
