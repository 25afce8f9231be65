"""AWQ's search bookkeeping that keeps its memory bounded at 7B: the chunked output loss equals the loss written
out whole, shared linear inputs are recorded once and are what those linears really read, and a layer is loaded
as the checkpoint's own tensors."""

from __future__ import annotations

import pytest
import torch

from llama_export.config import ModelArgs
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.graphs import awq, int4
from llama_export.model import attention_bias, rope_inv_freq, rope_tables

ARGS = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_seq_len=64)


def _direct_loss(x: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor, block: int) -> float:
    """‖X·Wᵀ − (X / s)·Q(W·s)ᵀ‖² / numel summed over the linears, on whole tensors in float64."""
    total = 0.0
    for w in weights:
        quantized = int4.fake_quantize((w * s).t(), block).double()  # [in, out]
        diff = x.double() @ w.t().double() - (x.double() / s.double()) @ quantized
        total += float(diff.pow(2).mean())
    return total


@pytest.mark.parametrize("tokens", [300, 100], ids=["gram", "rows"])  # in=256 < tokens uses the Gram matrix
def test_chunked_output_loss_equals_the_whole_loss(tokens):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, 256, generator=gen) * torch.linspace(0.1, 4, 256)  # uneven channels, like activations
    # out = 2.5 chunks, so a dropped or repeated partial chunk changes the sum
    weights = [torch.randn(int(awq.LOSS_OUT_CHUNK * 2.5), 256, generator=gen), torch.randn(96, 256, generator=gen)]
    s = torch.rand(256, generator=gen) + 0.5
    gram = x.t() @ x if x.shape[1] < x.shape[0] else None
    assert (gram is not None) == (tokens == 300)
    got = awq._output_loss(x, gram, weights, s, 32)
    assert got == pytest.approx(_direct_loss(x, weights, s, 32), rel=1e-4)


def test_shared_inputs_are_recorded_once_and_are_what_those_linears_read():
    block = awq._load_block(RandomCheckpoint(ARGS, 0), ARGS, 0)
    seen: dict[str, torch.Tensor] = {}

    def probe(name):
        def hook(module, inputs, output):  # returns None: the output is left alone
            seen[name] = inputs[0].reshape(-1, inputs[0].shape[-1])
        return hook

    probes = [module.register_forward_hook(probe(name)) for name, module in block.named_modules()
              if name in awq.SHARED_INPUT]
    recorder = awq._InputRecorder(block, per_call=10_000, calls=1)
    seq = 16
    cos, sin = rope_tables(torch.arange(seq)[None], rope_inv_freq(ARGS))
    empty = torch.zeros(1, ARGS.kv_heads, 0, ARGS.head_dim)
    with torch.no_grad():
        block(torch.randn(1, seq, ARGS.dim), cos, sin, attention_bias(torch.ones(1, seq, dtype=torch.int64), seq),
              empty, empty)
    for probe in probes:
        probe.remove()
    inputs = recorder.take(10_000)
    assert recorder.buffers == {}  # the recorder lets go of its buffers
    assert set(inputs) == {"attention.wq", "attention.wo", "feed_forward.w1", "feed_forward.w2"}
    assert set(seen) == set(awq.SHARED_INPUT)
    for linear in awq.SHARED_INPUT:
        assert torch.equal(inputs[awq.input_name(linear)], seen[linear]), linear


def test_a_loaded_layer_holds_the_checkpoint_tensors():
    ckpt = RandomCheckpoint(ARGS, 3)
    block = awq._load_block(ckpt, ARGS, 0)
    state = block.state_dict()
    assert state and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state.values())
    for name, tensor in state.items():
        assert torch.equal(tensor, ckpt.tensor("layers.0." + name)), name
