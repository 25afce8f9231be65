"""Checkpoint formats: detection, Meta shard merging and RoPE permutation, HF naming, strict one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from llama_export.config import SIZES, ModelArgs
from llama_export.errors import UserError
from llama_export.exporter.checkpoints import (
    SafetensorsCheckpoint,
    expected_shapes,
    load_model,
    open_checkpoint,
    save_checkpoint,
)
from llama_export.exporter.hf_format import (
    HFCheckpoint,
    args_from_config,
    ffn_params,
    hf_config,
    to_hf_state_dict,
)
from llama_export.exporter.meta_format import (
    MetaCheckpoint,
    args_from_params,
    half_to_interleaved,
    interleaved_to_half,
    meta_params,
    save_meta_checkpoint,
)
from llama_export.exporter.random_init import RandomCheckpoint


def assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same names in the same (model) order, bit-identical values."""
    assert list(state) == list(expected)
    for name, t in expected.items():
        assert torch.equal(state[name], t), name


# --- Meta consolidated -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_shards", [1, 2, 4])
def test_meta_shards_merge_back_to_the_same_weights(tmp_path, tiny_args, tiny_state, n_shards):
    paths = save_meta_checkpoint(tiny_state, tiny_args, tmp_path, n_shards=n_shards)
    assert [p.name for p in paths] == [f"consolidated.{i:02d}.pth" for i in range(n_shards)]
    ckpt = open_checkpoint(tmp_path)
    assert isinstance(ckpt, MetaCheckpoint) and ckpt.args == tiny_args
    assert_same(ckpt.state_dict(), tiny_state)


def test_meta_shards_hold_interleaved_rows_split_fairscale_style(tmp_path, tiny_args, tiny_state):
    save_meta_checkpoint(tiny_state, tiny_args, tmp_path, n_shards=2)
    shards = [torch.load(tmp_path / f"consolidated.0{i}.pth", weights_only=True) for i in range(2)]
    wq = torch.cat([s["layers.0.attention.wq.weight"] for s in shards], dim=0)
    assert torch.equal(interleaved_to_half(wq, tiny_args.n_heads), tiny_state["layers.0.attention.wq.weight"])
    assert not torch.equal(wq, tiny_state["layers.0.attention.wq.weight"])
    assert shards[0]["layers.0.attention.wo.weight"].shape == (64, 32)  # row parallel: dim 1
    assert shards[0]["layers.0.feed_forward.w1.weight"].shape == (96, 64)  # column parallel: dim 0
    assert shards[0]["tok_embeddings.weight"].shape == (128, 32)  # LLaMA 1/2 ParallelEmbedding: dim 1
    assert torch.equal(shards[1]["norm.weight"], tiny_state["norm.weight"])  # replicated


def test_rope_permutation_round_trips_and_pairs_rows_as_rotate_half():
    n_heads, head_dim = 2, 8
    # Meta's head rows: (re0, im0, re1, im1, ...); rotate-half: (re0, re1, ..., im0, im1, ...).
    meta = torch.arange(n_heads * head_dim, dtype=torch.float32)[:, None].expand(-1, 3).contiguous()
    half = interleaved_to_half(meta, n_heads)
    assert half[:head_dim, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(half_to_interleaved(half, n_heads), meta)


def test_meta_vocab_parallel_embedding_is_merged_on_vocab(tmp_path, tiny_args, tiny_state):
    save_meta_checkpoint(tiny_state, tiny_args, tmp_path, n_shards=2, embedding_dim=0)  # Llama 3 layout
    assert torch.equal(open_checkpoint(tmp_path).tensor("tok_embeddings.weight"), tiny_state["tok_embeddings.weight"])


def test_llama1_params_with_vocab_minus_one_and_rope_freqs(tmp_path, tiny_args, tiny_state):
    save_meta_checkpoint(tiny_state, tiny_args, tmp_path, n_shards=2)
    params = json.loads((tmp_path / "params.json").read_text())
    (tmp_path / "params.json").write_text(json.dumps({**params, "vocab_size": -1}))
    shard = torch.load(tmp_path / "consolidated.00.pth", weights_only=True)
    torch.save({**shard, "rope.freqs": torch.zeros(8)}, tmp_path / "consolidated.00.pth")
    ckpt = open_checkpoint(tmp_path / "consolidated.00.pth")  # a file inside the folder works too
    assert ckpt.args.vocab_size == 128
    assert_same(ckpt.state_dict(), tiny_state)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_config_files_describe_every_named_size_exactly(size):
    args = SIZES[size]
    # params.json has no key for tying: a Meta folder says it by holding no output.weight
    assert args_from_params(meta_params(args), None, tied=args.tie_embeddings) == args
    assert args_from_config({"model_type": "llama", **hf_config(args)}) == args


def test_meta_params_without_context_length_take_the_known_size():
    params = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
              "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True}
    assert args_from_params(params, None) == SIZES["llama3.1-8b"]


# --- Hugging Face ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "intermediate"), [(64, 192), (64, 100), (64, 1000), (4096, 11008), (4096, 14336),
                                                   (2048, 8192), (3072, 8192), (8192, 28672)])
def test_ffn_params_reproduce_intermediate_size(dim, intermediate):
    multiple_of, multiplier = ffn_params(dim, intermediate)
    args = ModelArgs(dim=dim, n_layers=1, n_heads=dim // 16, vocab_size=8, multiple_of=multiple_of,
                     ffn_dim_multiplier=multiplier)
    assert args.hidden_dim == intermediate


def test_hf_single_file_loads_and_maps_names(tmp_path, tiny_args, tiny_state, write_hf):
    write_hf(tiny_state, tiny_args, tmp_path)
    ckpt = open_checkpoint(tmp_path)
    assert isinstance(ckpt, HFCheckpoint) and ckpt.args.hidden_dim == tiny_args.hidden_dim
    assert_same(ckpt.state_dict(), tiny_state)


def test_hf_sharded_index_loads(tmp_path, tiny_args, tiny_state):
    hf = to_hf_state_dict(tiny_state)
    names = list(hf)
    files = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in files.items():
        save_file({n: hf[n].contiguous() for n in part}, str(tmp_path / file), metadata={"format": "pt"})
    weight_map = {n: file for file, part in files.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **hf_config(tiny_args)}))
    assert_same(open_checkpoint(tmp_path).state_dict(), tiny_state)

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match="model-00002-of-00002.safetensors"):
        open_checkpoint(tmp_path)


def test_hf_tied_embeddings_hold_the_matrix_once(tmp_path, tiny_args, tiny_state, write_hf):
    """Llama 3.2: tie_word_embeddings true and no lm_head.weight; the embedding is the output projection."""
    state = {n: t for n, t in tiny_state.items() if n != "output.weight"}
    write_hf(state, tiny_args.replace(tie_embeddings=True), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.args.tie_embeddings and "output.weight" not in ckpt.names()
    assert_same(ckpt.state_dict(), state)
    model = load_model(ckpt)
    assert model.output is None and torch.equal(model.tok_embeddings.weight, state["tok_embeddings.weight"])
    # A folder that saved lm_head.weight anyway loads the same way (transformers ignores it when tied).
    write_hf(tiny_state, tiny_args.replace(tie_embeddings=True), tmp_path / "with-lm-head")
    assert_same(open_checkpoint(tmp_path / "with-lm-head").state_dict(), state)
    # Untied, a missing lm_head.weight is still a missing tensor.
    write_hf(state, tiny_args, tmp_path / "untied")
    with pytest.raises(UserError, match="missing 1 tensor.*lm_head.weight"):
        open_checkpoint(tmp_path / "untied")


@pytest.mark.parametrize("fmt", ["meta", "own"])
def test_meta_and_own_formats_store_a_tied_embedding_once(tmp_path, tiny_args, tiny_state, fmt):
    args = tiny_args.replace(tie_embeddings=True)
    if fmt == "meta":
        save_meta_checkpoint(tiny_state, args, tmp_path, n_shards=2)  # output.weight in the dict is dropped
        for shard in sorted(tmp_path.glob("consolidated.*.pth")):
            assert "output.weight" not in torch.load(shard, weights_only=True)
    else:
        save_checkpoint(tiny_state, args, tmp_path)
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.args == args
    assert_same(ckpt.state_dict(), {n: t for n, t in tiny_state.items() if n != "output.weight"})


@pytest.mark.parametrize("flag", ["quantize_lm_head", "quantize_embeddings"])
def test_quantizing_a_tied_matrix_is_refused(tiny_args, flag):
    from llama_export.exporter.options import prepare_quantization

    tied = RandomCheckpoint(tiny_args.replace(tie_embeddings=True))
    assert prepare_quantization(tied, "int8-wo").quantize_lm_head is False  # the default leaves it in float
    with pytest.raises(UserError, match="tie the output projection to the embedding"):
        prepare_quantization(tied, "int8-wo", **{flag: True})


def test_tied_models_count_the_matrix_once(tiny_args):
    untied, tied = tiny_args, tiny_args.replace(tie_embeddings=True)
    assert untied.n_params - tied.n_params == tiny_args.vocab_size * tiny_args.dim
    assert sum(p.numel() for p in load_model(RandomCheckpoint(tied)).parameters()) == tied.n_params


def test_hf_unsupported_rope_type_is_a_user_error(tmp_path, tiny_args, tiny_state, write_hf):
    write_hf(tiny_state, tiny_args, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "yarn"}}))
    with pytest.raises(UserError, match="config.json.*yarn"):
        open_checkpoint(tmp_path)


# --- our own format and random init ----------------------------------------------------------------------------


def test_own_format_round_trips(tmp_path, tiny_args, tiny_state):
    save_checkpoint(tiny_state, tiny_args, tmp_path)
    ckpt = open_checkpoint(tmp_path / "model.safetensors")
    assert isinstance(ckpt, SafetensorsCheckpoint) and ckpt.args == tiny_args
    assert_same(ckpt.state_dict(), tiny_state)


def test_random_init_streams_the_same_weights_as_load_model(tiny_args):
    ckpt = RandomCheckpoint(tiny_args, seed=5)
    model_state = load_model(ckpt).state_dict()
    streamed = dict(ckpt.iter_tensors())
    assert list(streamed) == list(expected_shapes(tiny_args)) == list(model_state)
    for name in reversed(list(streamed)):  # any order: each tensor has its own seed
        assert torch.equal(ckpt.tensor(name), model_state[name]) and torch.equal(streamed[name], model_state[name])


def test_fingerprints_identify_the_weights(tmp_path, tiny_args, tiny_state):
    save_meta_checkpoint(tiny_state, tiny_args, tmp_path / "a", n_shards=2)
    save_meta_checkpoint(tiny_state, tiny_args, tmp_path / "b", n_shards=2)
    save_meta_checkpoint({**tiny_state, "norm.weight": tiny_state["norm.weight"] + 1}, tiny_args, tmp_path / "c", 2)
    a, b, c = (open_checkpoint(tmp_path / x).fingerprint() for x in "abc")
    assert a == b != c


# --- strict loading --------------------------------------------------------------------------------------------

BAD_KINDS = ["missing_path", "not_a_checkpoint", "missing_tensor", "unexpected_tensor", "misshaped_tensor",
             "contradicting_params", "contradicting_layers", "invalid_json", "truncated_safetensors", "not_safetensors",
             "pth_non_tensor", "pth_training_state", "pth_corrupt", "shards_disagree", "shard_missing_tensor",
             "meta_contradicting_params", "hf_missing_tensor", "hf_contradicting_config"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_checkpoint_fails_at_open_with_one_clear_line(make_bad_checkpoint, kind):
    case = make_bad_checkpoint(kind)
    with pytest.raises(UserError) as caught:
        open_checkpoint(case.path)  # before any tensor data is read
    message = str(caught.value)
    assert message and "\n" not in message
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_many_missing_tensors_are_named_then_counted(tmp_path, tiny_args, tiny_state):
    save_checkpoint({n: t for n, t in tiny_state.items() if "feed_forward" not in n}, tiny_args, tmp_path)
    with pytest.raises(UserError, match=r"missing 6 tensor\(s\): layers\.0\.feed_forward\.w1\.weight, .* and 2 more"):
        open_checkpoint(tmp_path)


def test_a_whole_missing_layer_is_reported_against_params(tmp_path, tiny_args, tiny_state):
    save_checkpoint({n: t for n, t in tiny_state.items() if not n.startswith("layers.1.")}, tiny_args, tmp_path)
    with pytest.raises(UserError, match="n_layers=2 but .* holds 1 layers"):
        open_checkpoint(tmp_path)


def test_own_format_fingerprint_ignores_safetensors_header_key_order(tmp_path, tiny_args, tiny_state):
    import struct

    from llama_export.exporter.checkpoints import SafetensorsCheckpoint, save_checkpoint

    save_checkpoint(tiny_state, tiny_args, tmp_path / "a")
    path = tmp_path / "a" / "model.safetensors"
    before = SafetensorsCheckpoint(tmp_path / "a").fingerprint()
    # Rewrite the header with its metadata keys in the other order, as safetensors sometimes does (#584).
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert text != raw[8:8 + n]
    path.write_bytes(raw[:8] + text + raw[8 + n:])
    assert SafetensorsCheckpoint(tmp_path / "a").fingerprint() == before
    tiny_state["norm.weight"] = tiny_state["norm.weight"] * 2
    save_checkpoint(tiny_state, tiny_args, tmp_path / "b")
    assert SafetensorsCheckpoint(tmp_path / "b").fingerprint() != before


def test_uniform_init_has_the_init_std_and_does_not_depend_on_threads(monkeypatch):
    from llama_export.exporter import random_init

    shape = (3 * random_init.RANDOM_CHUNK // 1024 + 7, 1024)  # several chunks and a ragged last one
    many = random_init.uniform_init(shape, seed=5)
    monkeypatch.setattr(random_init.os, "cpu_count", lambda: 1)  # one thread fills every chunk in turn
    assert torch.equal(random_init.uniform_init(shape, seed=5), many)
    assert not torch.equal(random_init.uniform_init(shape, seed=6), many)
    bound = 3 ** 0.5 * random_init.INIT_STD
    assert float(many.abs().max()) <= bound * (1 + 1e-6)  # fp32 rounding of the bound
    assert abs(float(many.std()) - random_init.INIT_STD) < 1e-4 and abs(float(many.mean())) < 1e-4
    flat = many.reshape(-1)
    first, second = flat[: random_init.RANDOM_CHUNK], flat[random_init.RANDOM_CHUNK: 2 * random_init.RANDOM_CHUNK]
    assert not torch.equal(first, second)  # each chunk draws from its own stream


def test_random_init_drawn_in_fp16_equals_the_fp32_draw_rounded(tiny_args):
    ckpt = RandomCheckpoint(tiny_args, seed=7)
    for name, half in ckpt.iter_tensors(torch.float16):
        assert half.dtype == torch.float16 and torch.equal(half, ckpt.tensor(name).to(torch.float16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_random_init_into_alternating_buffers(tiny_args, dtype):
    """The export stream's reused buffers give the same tensors, and tensor i+2 reuses tensor i's memory."""
    from llama_export.exporter.weights import AlternatingBuffers

    ckpt = RandomCheckpoint(tiny_args, seed=7)
    pooled = ckpt.iter_tensors(dtype, AlternatingBuffers())
    pointers = []
    for (name, fresh), (pooled_name, reused) in zip(ckpt.iter_tensors(dtype), pooled):
        assert name == pooled_name and reused.dtype == dtype and torch.equal(reused, fresh)
        if reused.dim() > 1:
            pointers.append(reused.data_ptr())
    # two slots in turn (each regrown only when a larger tensor comes): far fewer buffers than tensors
    assert pointers[-1] == pointers[-3] != pointers[-2] == pointers[-4]
    assert len(set(pointers)) <= 6 < len(pointers)
