"""The repository writer without a server: layout, schema round trips, semantic checks, TensorRT-RTX plan configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from llama_export import io_spec
from llama_export.config import ModelArgs
from llama_export.exporter import artifacts
from llama_export.triton import checks, configs, containers, protocol
from llama_export.triton.repository import VENDORED_MODULES, write_repository

SMALL = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=64)


def _config(path: Path) -> pb.ModelConfig:
    return checks.parse_config(path.read_text(), str(path))


@pytest.fixture(scope="module")
def tiny_repo(tiny_dir, tmp_path_factory) -> Path:
    return write_repository(tiny_dir, tmp_path_factory.mktemp("repo") / "repo").path


def test_cpu_repository_layout_and_configs(tiny_repo, tiny_dir):
    names = sorted(p.name for p in tiny_repo.iterdir())
    assert names == ["README.md", "tiny_complete", "tiny_generate", "tiny_onnx"]
    assert "`sentencepiece` (this model's sentencepiece tokenizer)" in (tiny_repo / "README.md").read_text()
    assert not [p.name for p in tiny_repo.iterdir() if p.name.startswith(".")], "staging folders must be renamed away"
    onnx = _config(tiny_repo / "tiny_onnx" / "config.pbtxt")
    built = artifacts.load_manifest(tiny_dir)
    assert [t.name for t in onnx.input] == io_spec.input_names(built.args.n_layers)
    assert [t.name for t in onnx.output] == io_spec.output_names(built.args.n_layers)
    assert onnx.backend == "onnxruntime" and onnx.max_batch_size == 0
    checks.check_against_onnx(onnx, tiny_repo / "tiny_onnx" / "1" / "model.onnx")
    assert (tiny_repo / "tiny_onnx" / "1" / "model.onnx.data").stat().st_size > 0
    generate = _config(tiny_repo / "tiny_generate" / "config.pbtxt")
    complete = _config(tiny_repo / "tiny_complete" / "config.pbtxt")
    assert generate.model_transaction_policy.decoupled and not complete.model_transaction_policy.decoupled
    assert generate.parameters[protocol.PARAM_ONNX_MODEL].string_value == "tiny_onnx/1/model.onnx"
    assert ModelArgs.from_dict(json.loads(generate.parameters[protocol.PARAM_MODEL_ARGS].string_value)) == built.args
    assert generate.parameters[protocol.PARAM_SCHEDULER].string_value == protocol.SCHEDULER_IN_FLIGHT
    assert generate.instance_group[0].count == 1, "one batching instance owns the cores"
    assert complete.parameters[protocol.PARAM_SCHEDULER].string_value == protocol.SCHEDULER_SERIAL
    assert int(generate.parameters[protocol.PARAM_MAX_TOKENS].string_value) == 16 * built.args.max_seq_len
    longest_prompt = int(generate.parameters[protocol.PARAM_MAX_INPUT].string_value)
    assert longest_prompt == built.args.max_seq_len - 1
    assert int(generate.parameters[protocol.PARAM_MAX_PREFILL].string_value) == longest_prompt
    for model in ("tiny_generate", "tiny_complete"):
        version = tiny_repo / model / "1"
        assert (version / "model.py").is_file()
        assert all((version / name).is_file() for name in built.manifest["tokenizer"]["files"])
        assert all((version / "llama_export" / module).is_file() for module in VENDORED_MODULES)


def test_vendored_modules_import_without_torch(tiny_repo):
    """The front end's interpreter may have no torch: the vendored copy must not need it (nor onnx/tritonclient)."""
    code = ("import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'onnx', 'tritonclient')];"
            f"sys.path.insert(0, {str(tiny_repo / 'tiny_generate' / '1')!r});"
            "import llama_export.validate.runners, llama_export.validate.generation, llama_export.exporter.tokenization;"
            "import llama_export.triton.streaming, llama_export.triton.protocol, llama_export.validate.batching;"
            "import llama_export.triton.scheduler;"
            "assert 'tiny_generate' in llama_export.__file__, llama_export.__file__")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("broken, message", [
    ('name: "m"\ninput { name: "input_ids" data_type: TYPE_FLOAT32 dims: [ -1 ] }', "not a valid Triton"),
    ('name: "m"\nmax_batch_size: "zero"', "not a valid Triton"),
    ('name: "m"\ninstance_group { kind: KIND_TPU }', "not a valid Triton"),
    ('name: "m"\ndecoupled: true', "not a valid Triton"),  # belongs in model_transaction_policy
])
def test_schema_rejects_broken_config_text(broken, message):
    with pytest.raises(checks.ConfigError, match=message):
        checks.parse_config(broken)


def test_semantic_checks_catch_what_the_schema_allows(tmp_path):
    config = configs.onnx_model_config("m", SMALL, "float32")
    checks.check_model_io(config, SMALL, "float32")
    renamed = pb.ModelConfig()
    renamed.CopyFrom(config)
    renamed.input[0].name = "tokens"
    with pytest.raises(checks.ConfigError, match=r"missing \['input_ids'\], unexpected \['tokens'\]"):
        checks.check_model_io(renamed, SMALL, "float32")
    wrong_dims = pb.ModelConfig()
    wrong_dims.CopyFrom(config)
    wrong_dims.input[3].dims[1] = 4  # kv heads
    with pytest.raises(checks.ConfigError, match="past_key_values.0.key dims"):
        checks.check_model_io(wrong_dims, SMALL, "float32")
    batched = pb.ModelConfig()
    batched.CopyFrom(config)
    batched.max_batch_size = 8
    with pytest.raises(checks.ConfigError, match="max_batch_size"):
        checks.check_model_io(batched, SMALL, "float32")
    frontend = configs.frontend_config("g", SMALL, "float32", 63, 64, onnx_model="m/1/model.onnx")
    checks.check_frontend(frontend)
    frontend.model_transaction_policy.decoupled = False
    with pytest.raises(checks.ConfigError, match="decoupled must be true"):
        checks.check_frontend(frontend)


def test_checked_text_round_trips_and_refuses_placeholders():
    config = configs.onnx_model_config("m", SMALL, "float16")
    text = checks.checked_text(config)
    assert checks.parse_config(text) == config and "TYPE_FP16" in text
    config.parameters["note"].string_value = "${MODEL_DIR}"
    with pytest.raises(checks.ConfigError, match="placeholder"):
        checks.checked_text(config)


@pytest.fixture(scope="module")
def rtx_engine_dir(tmp_path_factory) -> Path:
    """A small export (opset 20: TensorRT-RTX builds its decomposed attention) with an engine in its manifest."""
    pytest.importorskip("tensorrt_rtx")
    from tiny_export import train_stand_in_tokenizer

    from llama_export.engine.builder import build_engine
    from llama_export.engine.profiles import ProfileLimits
    from llama_export.exporter.export import export_to_folder
    from llama_export.exporter.options import ExportOptions
    from llama_export.exporter.random_init import RandomCheckpoint

    folder = export_to_folder(RandomCheckpoint(SMALL, 0), tmp_path_factory.mktemp("rtx") / "small",
                              ExportOptions(opset=20), quiet=True)
    build = build_engine(folder / "model.onnx", SMALL, folder / "engine.plan",
                         ProfileLimits(max_batch=2, max_input=16, max_seq=64), builder="tensorrt-rtx")
    (folder / "tokenizer.model").write_bytes(train_stand_in_tokenizer(SMALL.vocab_size))  # replaces the tiny one
    manifest = json.loads((folder / artifacts.MANIFEST).read_text())
    manifest.pop("files")
    artifacts.write_manifest(folder, {**manifest, "engine": build.to_manifest()})
    return folder


def test_tensorrt_plan_config_matches_the_rtx_engine_profiles(rtx_engine_dir, tmp_path):
    written = write_repository(rtx_engine_dir, tmp_path / "repo", name="small")
    engine = artifacts.load_manifest(rtx_engine_dir).manifest["engine"]
    plan = _config(tmp_path / "repo" / "small_plan" / "config.pbtxt")
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 0
    assert list(plan.instance_group[0].profile) == ["0", "1"]
    checks.check_model_io(plan, SMALL, "float32")
    checks.check_against_profiles(plan, engine)
    for profile in engine["profiles"].values():  # -1 exactly where a profile lets the dim vary
        for tensor in plan.input:
            lo, _, hi = profile[tensor.name]
            assert all(d == -1 or d == a == b for d, a, b in zip(tensor.dims, lo, hi))
    version = f"tensorrt-rtx {engine['builder_version']}"
    assert written.tensorrt == version == plan.parameters[protocol.PARAM_TENSORRT_VERSION].string_value
    assert (tmp_path / "repo" / "small_plan" / "1" / "model.plan").read_bytes() == \
        (rtx_engine_dir / "engine.plan").read_bytes()
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert version in readme and containers.SUPPORT_MATRIX in readme
    gpu = _config(tmp_path / "repo" / "small_generate_trt" / "config.pbtxt")
    assert gpu.parameters[protocol.PARAM_PLAN_MODEL].string_value == "small_plan"
    assert gpu.parameters[protocol.PARAM_MAX_INPUT].string_value == "16"
    one_profile = pb.ModelConfig()
    one_profile.CopyFrom(plan)
    del one_profile.instance_group[0].profile[1:]
    with pytest.raises(checks.ConfigError, match="profiles"):
        checks.check_against_profiles(one_profile, engine)
    fixed_seq = pb.ModelConfig()
    fixed_seq.CopyFrom(plan)
    fixed_seq.input[0].dims[1] = 16
    with pytest.raises(checks.ConfigError, match="input_ids dim 1 is fixed at 16"):
        checks.check_against_profiles(fixed_seq, engine)


def test_container_tags_only_from_verified_rows():
    assert containers.container_tags("tensorrt", "7.2.2.3") == ["nvcr.io/nvidia/tritonserver:20.12-py3"]
    assert containers.container_tags("tensorrt", "10.13.0") == []
    assert containers.container_tags("tensorrt-rtx", "1.7.1.116") == []
    assert "support matrix" in containers.container_advice("tensorrt", "10.13.0")


def test_cli_writes_the_repository_and_reports_user_errors(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from llama_export.cli import main

    result = CliRunner().invoke(main, ["triton", str(tiny_dir), "--repo", str(tmp_path / "repo"), "--name", "demo",
                                       "--no-batching", "--instances", "3", "--max-prefill-tokens", "64"])
    assert result.exit_code == 0, result.output
    serial = _config(tmp_path / "repo" / "demo_generate" / "config.pbtxt")
    assert serial.parameters[protocol.PARAM_SCHEDULER].string_value == protocol.SCHEDULER_SERIAL
    assert serial.instance_group[0].count == 3 and serial.model_transaction_policy.decoupled
    assert serial.parameters[protocol.PARAM_MAX_PREFILL].string_value == "64"
    missing = CliRunner().invoke(main, ["triton", str(tmp_path / "nothing"), "--repo", str(tmp_path / "r2")])
    assert missing.exit_code == 2 and "llama-export export" in missing.output
    assert not (tmp_path / "r2").exists()
