"""Monitor sinks (tl_leadterm.sinks): the protocol, JSONL bytes, TensorBoard and Weights & Biases (offline)."""

import glob
import importlib.util
import json
import time

import pytest
import torch

from reference import T, V
from tl_leadterm import LeadTermError
from tl_leadterm.monitor import TrainingMonitor, read_records
from tl_leadterm.sinks import JSONLSink, Sink, TensorBoardSink, WandbSink, scalars
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy

HAS_TB = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


class ListSink:
    """A sink of one's own: anything with write(record) and close()."""

    def __init__(self):
        self.records, self.closed = [], 0

    def write(self, record):
        self.records.append(json.loads(json.dumps(record)))

    def close(self):
        self.closed += 1


def _train(corpus, basis, steps=6, close=True, **kw):
    model = ToyTransformer(ToyConfig(V, T, n_layers=2, dtype=torch.float64))
    mon = TrainingMonitor(model, basis, every=2, lr=0.05, **kw)
    train_toy(model, corpus, lr=0.05, steps=steps, batch_size=8, seed=1, progress=False, callback=mon.callback)
    if close:
        mon.close()
    return mon


def test_jsonl_bytes_are_the_records_as_json_lines(corpus, full_basis, tmp_path):
    """The JSONL sink writes json.dumps(record, allow_nan=False) and a newline per record (the monitor's format,
    unchanged); the same training gives the same bytes; append=True continues a file."""
    a = _train(corpus, full_basis, path=tmp_path / "a.jsonl")
    b = _train(corpus, full_basis, path=tmp_path / "b.jsonl")
    data = (tmp_path / "a.jsonl").read_bytes()
    assert data == "".join(json.dumps(r, allow_nan=False) + "\n" for r in a.records).encode("utf-8")
    assert data == (tmp_path / "b.jsonl").read_bytes() and [r["step"] for r in a.records] == [2, 4, 6]
    assert read_records(tmp_path / "a.jsonl") == a.records == b.records
    s = JSONLSink(tmp_path / "a.jsonl", append=True)
    s.write({"step": 8, "loss": None})
    s.close()
    s.close()                                            # closing twice is harmless
    assert (tmp_path / "a.jsonl").read_bytes() == data + b'{"step": 8, "loss": null}\n'
    with pytest.raises(ValueError, match="closed"):
        s.write({"step": 9})


def test_sinks_receive_every_record_and_are_closed_once(corpus, full_basis, tmp_path):
    mine = ListSink()
    assert isinstance(mine, Sink) and isinstance(JSONLSink(tmp_path / "x.jsonl"), Sink)
    mon = _train(corpus, full_basis, path=tmp_path / "m.jsonl", sinks=[mine])
    assert mine.records == mon.records == read_records(tmp_path / "m.jsonl") and mine.closed == 1
    mon.close()
    assert mine.closed == 1 and mon.sinks == []
    with pytest.raises(LeadTermError, match=r"write\(record\) and close\(\)"):
        TrainingMonitor(ToyTransformer(ToyConfig(V, T, n_layers=1)), full_basis, sinks=[object()])


def test_a_failing_sink_warns_and_the_others_continue(corpus, full_basis, tmp_path):
    class Broken(ListSink):
        def write(self, record):
            raise RuntimeError("sink down")

    mine = ListSink()
    with pytest.warns(RuntimeWarning, match="sink down"):
        mon = _train(corpus, full_basis, path=tmp_path / "m.jsonl", sinks=[Broken(), mine])
    assert len(mine.records) == 3 and len(read_records(tmp_path / "m.jsonl")) == 3 and mon.write_failures == 0


def test_scalars_flatten_the_groups_and_skip_undefined():
    rec = {"step": 4, "loss": 2.5, "kind": "real", "similarity": {"qk.0": 0.5, "qk.1": None},
           "explained": {"qk.0": 0.25}, "residual_norm": {}, "measures": {"L0/key_query/cov_cosine": 0.1}}
    assert list(scalars(rec)) == [("loss", 2.5), ("similarity/qk.0", 0.5), ("explained/qk.0", 0.25),
                                  ("measures/L0/key_query/cov_cosine", 0.1)]
    assert list(scalars({"step": 0, "loss": None})) == []


@pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (pip install tensorboard)")
def test_tensorboard_scalars_read_back(corpus, full_basis, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mon = _train(corpus, full_basis, tensorboard=tmp_path / "tb")
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    expect = {}
    for r in mon.records:
        for tag, v in scalars(r):
            expect.setdefault(tag, []).append((r["step"], v))
    assert set(ea.Tags()["scalars"]) == set(expect) and "coefficient_ratio/W_O" in expect
    for tag, pairs in expect.items():
        got = [(e.step, e.value) for e in ea.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in pairs]
        assert [v for _, v in got] == pytest.approx([v for _, v in pairs], rel=1e-6, abs=1e-30)   # stored as float32


def test_missing_packages_are_one_line_errors(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def without(name, *a, **k):
        if name.startswith(("torch.utils.tensorboard", "wandb")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(LeadTermError, match=r"^TensorBoard logging needs the tensorboard package: pip install tensorboard"):
        TensorBoardSink(tmp_path / "tb")
    with pytest.raises(LeadTermError, match=r"pip install tl-leadterm\[wandb\]$"):
        WandbSink(project="x")
    assert not (tmp_path / "tb").exists()


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install tl-leadterm[wandb])")
def test_wandb_offline_run(corpus, full_basis, tmp_path, monkeypatch):
    """WANDB_MODE=offline: a real run in a local folder holds every scalar; the run is finished on close."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(project="tl-leadterm-test", dir=str(tmp_path), settings=wandb.Settings(console="off"))
    mon = _train(corpus, full_basis, close=False, sinks=[sink])
    last = mon.records[-1]
    for tag, v in scalars(last):                            # the run's summary holds the last value of each scalar
        assert sink.run.summary[tag] == pytest.approx(v, rel=1e-12, abs=1e-300)
    mon.close()
    assert sink.run is None and mon.sinks == []
    files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    keys = [tag.encode() for tag, _ in scalars(last)]
    deadline = time.monotonic() + 30                        # wandb's service writes the run file after finish() returns
    while True:
        data = open(files[0], "rb").read()
        if all(k in data for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [k for k in keys if k not in data] == []         # the run file on disk holds every key
    # a run of one's own is logged to and left open
    own = wandb.init(project="tl-leadterm-test", dir=str(tmp_path), settings=wandb.Settings(console="off"))
    try:
        s = WandbSink(own)
        s.write({"step": 1, "loss": 0.5})
        s.close()
        assert own.summary["loss"] == 0.5
        own.log({"after": 1.0}, step=2, commit=True)         # still open
        assert own.summary["after"] == 1.0
    finally:
        own.finish()
