"""The weight stream in a child process (big models) writes what the thread writes, and fails and stops alike."""

from __future__ import annotations

import threading

import pytest
import torch
from export_helpers import PREVIOUS, InterruptingCheckpoint, previous_output

from llama_export.config import ModelArgs
from llama_export.exporter import weights
from llama_export.exporter.checkpoints import open_checkpoint
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.meta_format import save_meta_checkpoint
from llama_export.exporter.options import ExportOptions
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.exporter.stream_process import ProcessWeightStreamer

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


def make_checkpoint(source: str, tmp_path, tiny_args, tiny_state, write_hf):
    """Sources that pickle differently for the child: random init (as is), Hugging Face (handles dropped), Meta
    (reopened from its folder)."""
    if source == "random":
        return RandomCheckpoint(tiny_args, seed=3)
    if source == "hf":
        return open_checkpoint(write_hf(tiny_state, tiny_args, tmp_path / "hf"))
    save_meta_checkpoint(tiny_state, tiny_args, tmp_path / "meta", n_shards=2)
    return open_checkpoint(tmp_path / "meta")


@pytest.mark.parametrize("source", ["random", "hf", "meta"])  # "own" reads like "hf" (SafetensorsFiles)
def test_process_stream_writes_the_threads_bytes_for_every_source(source, tmp_path, monkeypatch, tiny_args,
                                                                  tiny_state, write_hf):
    checkpoint = make_checkpoint(source, tmp_path, tiny_args, tiny_state, write_hf)
    threaded = export_to_folder(checkpoint, tmp_path / "thread", ExportOptions("fp16"), quiet=True)
    monkeypatch.setattr(weights, "PROCESS_MIN_BYTES", 0)
    started = []
    original = ProcessWeightStreamer.start
    monkeypatch.setattr(ProcessWeightStreamer, "start", lambda self: (started.append(self), original(self))[1])
    in_process = export_to_folder(checkpoint, tmp_path / "process", ExportOptions("fp16"), quiet=True)
    assert len(started) == 1 and started[0]._process.returncode == 0  # it really ran in a child
    for file in ("model.onnx.data", "model.onnx", "manifest.json"):
        assert (in_process / file).read_bytes() == (threaded / file).read_bytes(), file


def test_an_error_in_the_child_reaches_the_caller_and_keeps_the_previous_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "PROCESS_MIN_BYTES", 0)
    out = tmp_path / "out"
    previous_output(out)
    with pytest.raises(KeyboardInterrupt):  # raised by the checkpoint in the child, re-raised in the parent
        export_to_folder(InterruptingCheckpoint(ARGS), out, quiet=True)
    assert (out / "manifest.json").read_text() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder went


def test_cancel_stops_the_child(tmp_path):
    """cancel() closes the child's stdin: the child stops after the tensor in hand, reports Interrupted and exits
    by itself (exit 0; cancel kills it, exit -9, only if it still runs after a 30 s grace period)."""
    big = ModelArgs(dim=1024, n_layers=64, n_heads=8, vocab_size=32000)  # ~1.1 GB of fp16: seconds to stream
    checkpoint = RandomCheckpoint(big)
    streamed: list[str] = []
    streaming = threading.Event()

    def progress(name: str) -> None:
        streamed.append(name)
        streaming.set()

    streamer = ProcessWeightStreamer(checkpoint, torch.float16, tmp_path / "data", progress)
    streamer.start()
    assert streaming.wait(60)
    streamer.cancel()
    assert streamer._process.returncode == 0, "the child was killed instead of stopping on the cancel"
    with pytest.raises(weights.Interrupted):
        streamer.result()
    assert len(streamed) < len(list(checkpoint.names()))  # it stopped before the end
    assert (tmp_path / "data").stat().st_size < 1_000_000_000
