"""The evaluator: accuracies recomputed in numpy from raw scores, raw scores equal to independently computed
log-likelihoods, flipped labels on binary tasks only, exact match for generation, early failures on bad
names and mismatching checkpoints, and evaluate_all_checkpoints skipping finished steps."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symbol_tuning.data.embedded.datasets import generated_classification
from symbol_tuning.data.examples import GenerativeData, TextPair
from symbol_tuning.data.prompts import build_eval_prompt
from symbol_tuning.data.vocabularies import get_vocabulary
from symbol_tuning.evaluation import checkpoint_loading as eval_checkpoints
from symbol_tuning.evaluation import evaluator as evaluation
from symbol_tuning.evaluation import reporting
from symbol_tuning.evaluation.evaluator import EvalOptions
from symbol_tuning.evaluation.suites import EvalDataset, GenerativeTask, build_suite, chance_accuracy, suite_from_data
from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import model_from_config as decoder_model
from symbol_tuning.models.native_io import save_native
from symbol_tuning.models.safetensors_io import CheckpointMismatchError
from symbol_tuning.models.t5 import T5Config
from symbol_tuning.models.t5_model import model_from_config as t5_model
from symbol_tuning.training.checkpoints import Checkpointer
from symbol_tuning.training.train_state import TrainState

MAX_LEN = 512
OPTS = dict(k_per_class=1, max_input_length=MAX_LEN, min_prompt_bucket=MAX_LEN, batch_size=4, seed=3)
T5_CFG = T5Config.preset("tiny", vocab_size=259, d_model=32, d_ff=64, num_heads=2, num_encoder_layers=1,
                         num_decoder_layers=1, dtype="float32")
DEC_CFG = DecoderConfig.preset("tiny", vocab_size=259, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
                               d_ff=64, dtype="float32")


_INIT = {}


def _params(model, seed=0):
    """Random params (jitted init, compiled once per config: far faster than eager init on CPU)."""
    if model.config not in _INIT:
        shapes = ({"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
                  if model.family == "encoder_decoder" else {"decoder_input_tokens": (1, 8)})
        _INIT[model.config] = jax.jit(lambda rng: nn.meta.unbox(model.get_initial_variables(rng, shapes)["params"]))
    return _INIT[model.config](jax.random.PRNGKey(seed))


def _dataset(family, queries):
    return EvalDataset(family, generated_classification(family, split="eval", num_examples=queries, seed=0),
                       generated_classification(family, split="train", num_examples=12, seed=0))


@pytest.fixture(scope="module")
def suite():
    return suite_from_data("tiny", [_dataset("product_review", 5), _dataset("stance_on_cats", 4)])


@pytest.fixture(scope="module")
def t5():
    model = t5_model(T5_CFG)
    return model, _params(model)


@pytest.fixture(scope="module")
def t5_result(t5, suite):
    model, params = t5
    return evaluation.evaluate(model, params, suite, vocabulary=get_vocabulary("bytes"), options=EvalOptions(**OPTS))


def test_accuracy_average_and_chance_equal_numpy_recomputation_from_raw_scores(t5_result, suite):
    records, summary = t5_result.records, t5_result.summary
    for setting in evaluation.EVAL_SETTINGS:
        per = {}
        for d in suite.datasets:
            mine = [r for r in records if r["setting"] == setting and r["dataset"] == d.name]
            if setting == "flipped" and d.num_classes != 2:
                assert not mine
                continue
            assert len(mine) == len(d.queries.examples)
            scores = [np.asarray(r["scores"]) for r in mine]
            assert all(len(s) == d.num_classes for s in scores)
            predictions = np.array([int(np.argmax(s)) for s in scores])
            answers = np.array([r["answer"] for r in mine])
            assert predictions.tolist() == [r["prediction"] for r in mine]
            per[d.name] = float(np.mean(predictions == answers))
            assert summary["accuracy"][setting][d.name] == pytest.approx(per[d.name])
        assert summary["average"][setting] == pytest.approx(np.mean(list(per.values())))
    assert summary["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert summary["flipped_chance"] == 0.5


def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _padded(rows, length):
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def test_raw_scores_equal_teacher_forced_log_likelihoods_of_the_encoder_decoder(t5, t5_result, suite):
    model, params = t5
    vocab = get_vocabulary("bytes")
    by_name = {d.name: d for d in suite.datasets}
    encs, targets, scores = [], [], []
    for record in [r for r in t5_result.records if r["index"] in (0, 2)][:4]:
        d = by_name[record["dataset"]]
        flipped = record["setting"] == "flipped"
        prompt = build_eval_prompt(d.queries, d.exemplars, setting="labels_only" if flipped else record["setting"],
                                   seed=3, index=record["index"], k_per_class=1, flipped=flipped,
                                   max_input_length=MAX_LEN - 1)
        for option, score in zip(prompt.options, record["scores"]):
            encs.append(vocab.encode(prompt.inputs) + [vocab.eos_id])
            targets.append(vocab.encode(option) + [vocab.eos_id])
            scores.append(score)
    # Right padding is exact: the encoder masks pad ids and the decoder is causal.
    batch = {"encoder_input_tokens": _padded(encs, MAX_LEN),
             "decoder_input_tokens": _padded([[0] + t[:-1] for t in targets], 16)}
    logp = _log_softmax(jax.jit(model.compute_logits)(params, batch))
    for row, (target, score) in enumerate(zip(targets, scores)):
        assert score == pytest.approx(sum(logp[row, i, t] for i, t in enumerate(target)), abs=2e-3)


def test_raw_scores_equal_causal_log_likelihoods_of_the_decoder_only_model(suite):
    model = decoder_model(DEC_CFG)
    params = _params(model, seed=1)
    vocab = get_vocabulary("bytes")
    d = suite.datasets[1]
    result = evaluation.evaluate(model, params, suite_from_data("one", [d]), vocabulary=vocab,
                                 options=EvalOptions(settings=["neither"], **OPTS))
    rows, starts, options, scores = [], [], [], []
    for record in result.records[:2]:
        prompt = build_eval_prompt(d.queries, d.exemplars, setting="neither", seed=3, index=record["index"],
                                   k_per_class=1, max_input_length=MAX_LEN)
        ids = vocab.encode(prompt.inputs)
        for option, score in zip(prompt.options, record["scores"]):
            opt = vocab.encode(option)
            rows.append(ids + opt)
            starts.append(len(ids))
            options.append(opt)
            scores.append(score)
    logp = _log_softmax(jax.jit(model.compute_logits)(params, {"decoder_input_tokens": _padded(rows, MAX_LEN + 16)}))
    for row, (start, opt, score) in enumerate(zip(starts, options, scores)):
        assert score == pytest.approx(sum(logp[row, start - 1 + j, t] for j, t in enumerate(opt)), abs=2e-3)


def test_length_normalized_scores_equal_numpy_mean_log_likelihoods_for_options_of_unequal_length(t5, t5_result,
                                                                                                   suite):
    model, params = t5
    vocab = get_vocabulary("bytes")
    by_name = {d.name: d for d in suite.datasets}
    records = [r for r in t5_result.records if r["setting"] == "labels_only"]
    encs, targets = [], []
    for record in records:
        d = by_name[record["dataset"]]
        prompt = build_eval_prompt(d.queries, d.exemplars, setting="labels_only", seed=3, index=record["index"],
                                   k_per_class=1, max_input_length=MAX_LEN - 1)
        for option in prompt.options:
            encs.append(vocab.encode(prompt.inputs) + [vocab.eos_id])
            targets.append(vocab.encode(option) + [vocab.eos_id])
    batch = {"encoder_input_tokens": _padded(encs, MAX_LEN),
             "decoder_input_tokens": _padded([[0] + t[:-1] for t in targets], 16)}
    logp = _log_softmax(jax.jit(model.compute_logits)(params, batch))
    means = [np.mean([logp[row, i, t] for i, t in enumerate(target)]) for row, target in enumerate(targets)]
    at, disagree, unequal = 0, 0, 0
    for record in records:
        k = record["num_classes"]
        mine, lengths = np.asarray(means[at:at + k]), [len(t) for t in targets[at:at + k]]
        at += k
        assert record["option_lengths"] == lengths
        unequal += len(set(lengths)) > 1
        np.testing.assert_allclose(record["scores_length_normalized"], mine, atol=2e-4)
        assert record["prediction_length_normalized"] == int(np.argmax(mine))
        assert record["correct_length_normalized"] == (int(np.argmax(mine)) == record["answer"])
        disagree += record["prediction_length_normalized"] != record["prediction"]
    assert unequal >= 4  # stance_on_cats: " favor", " against", " none"
    summary = t5_result.summary
    for setting in evaluation.EVAL_SETTINGS:
        per = {}
        for d in suite.datasets:
            mine = [r["correct_length_normalized"] for r in t5_result.records
                    if r["setting"] == setting and r["dataset"] == d.name]
            if mine:
                per[d.name] = float(np.mean(mine))
                assert summary["accuracy_length_normalized"][setting][d.name] == pytest.approx(per[d.name])
        assert summary["average_length_normalized"][setting] == pytest.approx(np.mean(list(per.values())))
    assert summary["average"]["labels_only"] == pytest.approx(  # the summed accuracy stays the headline
        np.mean([np.mean([r["correct"] for r in records if r["dataset"] == d.name]) for d in suite.datasets]))
    print(f"length normalisation changed {disagree} of {len(records)} labels_only predictions")


def test_instruction_placement_is_recorded_in_records_summary_and_csv_and_changes_only_instruction_prompts(
        t5, t5_result, suite, tmp_path):
    model, params = t5
    opts = dict(OPTS, max_input_length=2 * MAX_LEN, min_prompt_bucket=2 * MAX_LEN)  # the longer prompts fit
    every = evaluation.evaluate(model, params, suite, vocabulary=get_vocabulary("bytes"),
                                options=EvalOptions(settings=["instr_labels", "neither"],
                                                    instruction_placement="every_exemplar", **opts))
    assert {r["instruction_placement"] for r in every.records} == {"every_exemplar"}
    assert {r["instruction_placement"] for r in t5_result.records} == {"header"}
    assert every.summary["instruction_placement"] == "every_exemplar" and t5_result.summary["instruction_placement"] \
        == "header"
    header = {(r["setting"], r["dataset"], r["index"]): r["scores"] for r in t5_result.records}
    for r in every.records:
        same = np.allclose(r["scores"], header[(r["setting"], r["dataset"], r["index"])], atol=1e-4)
        assert same == (r["setting"] == "neither"), r  # no instruction in `neither`: the same prompt
    reporting.write_step_results(str(tmp_path), step=None, records=every.records, summary=every.summary)
    reporting.write_overview(str(tmp_path), {None: every.summary})
    import csv

    for name in ("final/summary.csv", "results.csv"):
        with open(tmp_path / name) as f:
            rows = list(csv.DictReader(f))
        assert {r["instruction_placement"] for r in rows} == {"every_exemplar"}
        averages = [r for r in rows if r.get("dataset", "average") == "average"]
        assert {r["setting"]: float(r["accuracy_length_normalized"]) for r in averages} == pytest.approx(
            every.summary["average_length_normalized"])
    with pytest.raises(ValueError, match="instruction_placement: unknown instruction placement 'footer'; allowed: "
                                         "header, every_exemplar"):
        EvalOptions(instruction_placement="footer")


class _EchoModel:
    """A stand-in encoder-decoder whose 'generation' is its own prompt: exact match holds iff target == input."""

    family = "encoder_decoder"
    config = "echo"

    def decode(self, params, prompt_tokens, prompt_lengths, *, max_new_tokens, eos_id, temperature=0.0, rng=None):
        return jnp.asarray(prompt_tokens)[:, :max_new_tokens]

    def score_options(self, *args):
        raise AssertionError("no scoring expected")


def test_generation_is_scored_by_exact_match_after_stripping_whitespace():
    data = GenerativeData("echo", "eval", (TextPair("[1, 2]", " [1, 2] "), TextPair("abc", "abd"),
                                           TextPair("x y", "x y")))
    suite = suite_from_data("gen", generative=[GenerativeTask("echo", data, shots=0)])
    result = evaluation.evaluate(_EchoModel(), {}, suite, vocabulary=get_vocabulary("bytes"),
                                 options=EvalOptions(batch_size=2))
    assert [r["correct"] for r in result.records] == [True, False, True]
    assert result.summary["generative"]["echo"] == pytest.approx(2 / 3)


class _NoComputeModel:
    family = "encoder_decoder"
    config = "none"

    def score_options(self, *args):
        raise AssertionError("model compute must not start")

    decode = score_options


def test_unknown_setting_and_dataset_fail_before_any_compute_naming_valid_ones(suite, shared_data):
    with pytest.raises(ValueError, match="unknown evaluation settings.*valid: instr_labels"):
        evaluation.evaluate(_NoComputeModel(), {}, suite, vocabulary=get_vocabulary("bytes"),
                            options=EvalOptions(settings=["instr_labels", "symbols_only"]))
    with pytest.raises(ValueError, match="unknown datasets \\['subjj'\\]; valid: subj, tweet_eval_hate"):
        build_suite("paper", data_root=str(shared_data), datasets=["subjj"])
    with pytest.raises(ValueError, match="unknown suite 'papers'"):
        build_suite("papers")


def test_chance_row_is_the_mean_inverse_class_count_over_the_paper_specs():
    from symbol_tuning.data.specs import EVAL_DATASETS

    counts = {name: len(spec.label_names) for name, spec in EVAL_DATASETS.items()}
    hand = {"subj": 2, "tweet_eval_hate": 2, "tweet_eval_stance_abortion": 3, "tweet_eval_stance_atheism": 3,
            "tweet_eval_stance_feminist": 3, "tweet_eval_stance_hillary": 3, "raft_ade_corpus_v2": 2,
            "raft_overruling": 2, "raft_semiconductor_org_types": 3, "raft_terms_of_service": 2,
            "raft_twitter_complaints": 2}
    assert counts == hand
    assert chance_accuracy(list(counts.values())) == pytest.approx((6 / 2 + 5 / 3) / 11)
    assert round(100 * chance_accuracy(list(counts.values())), 1) == 42.4


def test_native_checkpoint_that_mismatches_the_model_config_names_the_tensor(tmp_path):
    model = t5_model(T5_CFG)
    save_native(T5_CFG, _params(model), str(tmp_path / "native"))
    loaded = eval_checkpoints.load_for_eval(str(tmp_path / "native"))
    assert loaded.kind == "native" and loaded.config == T5_CFG
    with pytest.raises(CheckpointMismatchError, match=r"tensor '.*mlp.*wi.*' has shape .* needs"):
        eval_checkpoints.load_for_eval(str(tmp_path / "native"), model_config=T5_CFG.replace(d_ff=48))


def _save_orbax(directory, model, steps):
    optimizer = optax.sgd(0.1)
    ckpt = Checkpointer(directory, save_interval_steps=1)
    for step in steps:
        params = _params(model, seed=step)
        ckpt.save(step, TrainState(step=jnp.int32(step), params=params, opt_state=optimizer.init(params),
                                   rng=jnp.zeros((2,), jnp.uint32)))
    ckpt.close()


def test_orbax_training_dir_restores_params_and_rejects_a_mismatching_config(tmp_path):
    model = t5_model(T5_CFG)
    _save_orbax(str(tmp_path / "run"), model, [2])
    loaded = eval_checkpoints.load_for_eval(str(tmp_path / "run"), model_config=T5_CFG)
    assert loaded.step == 2
    expected = jax.tree_util.tree_leaves(_params(model, seed=2))
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree_util.tree_leaves(loaded.params), expected))
    with pytest.raises(CheckpointMismatchError, match="token_embedder|embedding|shape"):
        eval_checkpoints.load_for_eval(str(tmp_path / "run"), model_config=T5_CFG.replace(vocab_size=300))
    with pytest.raises(ValueError, match="pass model_config"):
        eval_checkpoints.load_for_eval(str(tmp_path / "run"))


def test_evaluate_all_checkpoints_skips_steps_with_results(tmp_path, suite, monkeypatch):
    model = t5_model(T5_CFG)
    _save_orbax(str(tmp_path / "run"), model, [1, 2])
    out = str(tmp_path / "eval")
    small = suite_from_data("small", [suite.datasets[0]])
    kwargs = dict(suite=small, vocabulary=get_vocabulary("bytes"), output_dir=out, model_config=T5_CFG,
                  options=EvalOptions(settings=["neither"], **OPTS))
    evaluation.evaluate_all_checkpoints(str(tmp_path / "run"), steps=[1], **kwargs)
    assert reporting.step_done(out, 1) and not reporting.step_done(out, 2)
    loads = []
    real = eval_checkpoints.load_for_eval
    monkeypatch.setattr(eval_checkpoints, "load_for_eval", lambda *a, **k: loads.append(k["step"]) or real(*a, **k))
    summaries = evaluation.evaluate_all_checkpoints(str(tmp_path / "run"), **kwargs)
    assert loads == [2]
    assert sorted(summaries) == [1, 2] and reporting.step_done(out, 2)
    assert os.path.isfile(os.path.join(out, "accuracy_vs_step.png"))


def test_make_eval_fn_returns_the_evaluate_summary_as_flat_metrics(t5, suite, t5_result, tmp_path):
    model, params = t5
    eval_fn = evaluation.make_eval_fn(model=model, suite=suite, vocabulary=get_vocabulary("bytes"),
                                      output_dir=str(tmp_path), options=EvalOptions(**OPTS))
    metrics = eval_fn(params, 7)
    assert metrics["eval/neither/average"] == pytest.approx(t5_result.summary["average"]["neither"])
    assert metrics["eval/flipped/product_review"] == pytest.approx(
        t5_result.summary["accuracy"]["flipped"]["product_review"])
    assert reporting.step_done(str(tmp_path), 7)


def test_sharded_params_on_an_8_device_mesh_give_the_unsharded_scores(t5, t5_result, suite, tmp_path):
    from symbol_tuning.training.partitioning import DEFAULT_RULES, MeshConfig, create_mesh

    model, params = t5
    save_native(T5_CFG, params, str(tmp_path / "native"))
    mesh = create_mesh(MeshConfig(ici_data=4, ici_fsdp=2, ici_tensor=1))  # byte vocab 259 cannot split
    loaded = eval_checkpoints.load_for_eval(str(tmp_path / "native"), mesh=mesh, rules=DEFAULT_RULES)
    assert any(len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated
               for leaf in jax.tree_util.tree_leaves(loaded.params))
    one = suite_from_data("one", [suite.datasets[1]])
    sharded = evaluation.evaluate(loaded.model, loaded.params, one, vocabulary=get_vocabulary("bytes"),
                                  options=EvalOptions(settings=["neither"], **{**OPTS, "batch_size": 8}), mesh=mesh)
    expected = [r for r in t5_result.records if r["dataset"] == "stance_on_cats" and r["setting"] == "neither"]
    assert len(sharded.records) == len(expected)
    for got, want in zip(sharded.records, expected):
        np.testing.assert_allclose(got["scores"], want["scores"], atol=2e-3)


def test_cli_all_steps_evaluates_only_steps_missing_from_the_output_dir(tmp_path):
    from symbol_tuning import eval as eval_cli

    model = t5_model(T5_CFG)
    _save_orbax(str(tmp_path / "run"), model, [1, 2])
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"family": "encoder_decoder",
                                                              "config": T5_CFG.to_dict()}))
    out = tmp_path / "eval"
    argv = [f"--checkpoint={tmp_path / 'run'}", "--all_steps", "--suite=embedded", "--datasets=product_review",
            "--settings=neither", "--max_queries=5", "--k_per_class=1", "--max_input_length=512",
            "--min_prompt_bucket=512", "--batch_size=4", "--seed=3",
            f"--model_config={tmp_path / 'cfg' / 'config.json'}", f"--output_dir={out}"]
    assert eval_cli.main(argv) == 0
    assert reporting.step_done(str(out), 1) and reporting.step_done(str(out), 2)
    first = os.path.getmtime(out / "step_1" / "summary.json")
    (out / "step_2" / "summary.json").unlink()
    assert eval_cli.main(argv) == 0
    assert os.path.getmtime(out / "step_1" / "summary.json") == first
    assert reporting.step_done(str(out), 2)
    assert (out / "results.csv").read_text().count("\n") == 1 + 2
