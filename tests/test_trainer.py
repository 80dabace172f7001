"""The training loop: NaN stops with the last good checkpoint intact, metrics files, learning, eval hook."""
import json
import math
import struct

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import model_from_config
from symbol_tuning.training import optimizers, partitioning, trainer
from symbol_tuning.training.checkpoints import Checkpointer
from symbol_tuning.training.train_state import abstract_train_state
from symbol_tuning.training.train_step import StepOptions

BATCH, LENGTH = 8, 32


class CopyStream:
    """Prefix-LM rows whose second half repeats the first: learnable by a tiny model in a few steps.
    Batch i is a pure function of (seed, i); `nan_at` puts a NaN loss weight into that (1-based) batch."""

    def __init__(self, *, seed=0, nan_at=None):
        self.seed, self.nan_at, self.index = seed, nan_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        half = LENGTH // 2
        x = rng.integers(3, 40, size=(BATCH, half))
        targets = np.concatenate([x, x], axis=1).astype(np.int32)
        inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
        weights = np.zeros((BATCH, LENGTH), np.float32)
        weights[:, half:] = 1.0
        if self.index == self.nan_at:
            weights[0, -1] = np.nan
        causal = np.zeros((BATCH, LENGTH), np.int32)
        causal[:, :half] = 1
        return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets, "decoder_loss_weights": weights,
                "decoder_causal_attention": causal}

    def state(self):
        return {"index": self.index}

    def restore(self, state):
        self.index = int(state["index"])


def _setup():
    model = model_from_config(DecoderConfig.preset("tiny", vocab_size=384, dtype="float32"))
    mesh = partitioning.create_mesh(partitioning.MeshConfig())
    lr = optimizers.make_schedule(kind="constant", base_learning_rate=3e-3)
    optimizer = optimizers.make_optimizer(name="adafactor", learning_rate=lr)
    return model, mesh, lr, optimizer


def _train(model_dir, stream, steps, eval_fn=None, **overrides):
    model, mesh, lr, optimizer = _setup()
    loop = dict(steps=steps, checkpoint_every=10, keep_checkpoints=3, log_every=1)
    loop.update(overrides)
    return trainer.train(model=model, model_dir=str(model_dir), train_stream=stream, optimizer=optimizer,
                         learning_rate_fn=lr, mesh=mesh, rules=partitioning.DEFAULT_RULES,
                         input_shapes={"decoder_input_tokens": (BATCH, LENGTH)}, options=trainer.LoopOptions(**loop),
                         step_options=StepOptions(loss_normalizing_factor="num_real_target_tokens"), eval_fn=eval_fn)


def _tfrecords(path):
    """Events of a TensorBoard file, read with the TFRecord framing (length, crc, data, crc)."""
    data = path.read_bytes()
    offset, events = 0, []
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        payload = data[offset + 12:offset + 12 + length]
        events.append(event_pb2.Event.FromString(payload))
        offset += 12 + length + 4
    return events


def test_nan_loss_stops_naming_step_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match=r"at step 7 .*loss=nan"):
        _train(tmp_path, CopyStream(nan_at=7), steps=12, checkpoint_every=3, log_every=100)
    model, mesh, _, optimizer = _setup()
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    try:
        assert ckpt.all_steps() == [3, 6]  # step 6 was the last good state; nothing at or after 7
        abstract = abstract_train_state(model=model, optimizer=optimizer,
                                        input_shapes={"decoder_input_tokens": (BATCH, LENGTH)}, mesh=mesh,
                                        rules=partitioning.DEFAULT_RULES)
        state, data = ckpt.restore(None, abstract)
    finally:
        ckpt.close()
    assert int(state.step) == 6 and data == {"index": 6}
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state.params))


def test_metrics_files_loss_decreases_and_eval_hook_runs(tmp_path):
    calls = []

    def eval_fn(params, step):
        calls.append(step)
        return {"param_rms": float(np.sqrt(np.mean(np.square(np.asarray(params["final_norm"]["scale"])))))}

    result = _train(tmp_path, CopyStream(), steps=30, eval_fn=eval_fn, eval_every=10)
    assert result.step == 30 and not result.preempted and result.checkpoint_steps == [10, 20, 30]
    assert calls == [10, 20, 30]

    rows = [json.loads(line) for line in (tmp_path / "metrics_train.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 31))
    for key in ("train/loss", "train/accuracy", "train/learning_rate", "train/grad_norm"):
        assert all(math.isfinite(r[key]) for r in train_rows), key
    # step 1 compiles: its time is logged once as timing/compile_time_s and never as throughput
    assert [r["step"] for r in rows if "timing/compile_time_s" in r] == [1]
    assert "timing/tokens_per_second" not in train_rows[0]
    for key in ("timing/tokens_per_second", "timing/step_time_s", "timing/eta_s", "perf/tflops_per_device"):
        assert all(math.isfinite(r[key]) and r[key] >= 0 for r in train_rows[1:]), key
    assert train_rows[-1]["timing/eta_s"] == 0 and train_rows[0]["train/learning_rate"] == pytest.approx(3e-3)
    assert all("perf/mfu" not in r for r in rows)  # no peak FLOP/s is known for a CPU
    assert [r["step"] for r in rows if "eval/param_rms" in r] == [10, 20, 30]
    # a uniform guess over 384 ids costs ln(384) = 5.95 nats; the copy task is learnable
    assert train_rows[0]["train/loss"] == pytest.approx(math.log(384), abs=0.5)
    losses = [r["train/loss"] for r in train_rows]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])

    (event_file,) = list((tmp_path / "train").glob("events.out.tfevents.*"))
    tags = {}
    for event in _tfrecords(event_file):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append((event.step, value.simple_value))
    for key in ("train/loss", "train/accuracy", "train/learning_rate", "train/grad_norm"):
        assert [s for s, _ in tags[key]] == list(range(1, 31)), key
    assert [s for s, _ in tags["timing/tokens_per_second"]] == list(range(2, 31))
    assert tags["train/loss"][-1][1] == pytest.approx(train_rows[-1]["train/loss"], rel=1e-6)


def test_logged_loss_is_the_window_mean_of_the_per_step_losses(tmp_path, capsys):
    _train(tmp_path / "every", CopyStream(), steps=10, log_every=1)
    capsys.readouterr()
    _train(tmp_path / "window", CopyStream(), steps=10, log_every=5)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]

    def rows(d):
        return [json.loads(x) for x in (d / "metrics_train.jsonl").read_text().splitlines()]
    per_step = {r["step"]: r for r in rows(tmp_path / "every") if "train/loss" in r}
    windows = {r["step"]: r for r in rows(tmp_path / "window") if "train/loss" in r}
    assert sorted(windows) == [5, 10]
    for end in (5, 10):
        for key in ("train/loss", "train/accuracy", "train/grad_norm"):
            expected = np.mean([per_step[s][key] for s in range(end - 4, end + 1)])
            assert windows[end][key] == pytest.approx(expected, rel=1e-5), (end, key)
    # one console line per window: step, loss, accuracy, lr, throughput, step time and ETA
    assert lines[0].startswith("step 1: compiled and ran in ")
    assert [line.split(" | ")[0] for line in lines[1:]] == ["step 5/10", "step 10/10"]
    for line in lines[1:]:
        for part in ("loss ", "acc ", "lr ", " tok/s", " TFLOP/s/dev", " s/step", "ETA "):
            assert part in line, (part, line)


def test_bad_batch_shape_names_feature_and_step(tmp_path):
    class ShortStream(CopyStream):
        def __next__(self):
            batch = super().__next__()
            if self.index == 1:
                batch["decoder_input_tokens"] = batch["decoder_input_tokens"][:, :16]
            return batch

    with pytest.raises(ValueError, match=r"step 1: feature 'decoder_input_tokens' has shape \(8, 16\)"):
        _train(tmp_path, ShortStream(), steps=3)
