"""engine/runtime.runtime_mismatches: why a plan may not load where it is about to run, from its manifest alone.

TensorRT plans are tied to the TensorRT version that built them; full TensorRT plans also to the GPU
architecture they were built for, while TensorRT-RTX plans are portable across its supported GPUs."""

from llama_export.engine.runtime import runtime_mismatches


def manifest(builder: str = "tensorrt", version: str = "10.13.0", targets=("SM90 (NVIDIA H200)",)) -> dict:
    """The fields of an engine manifest (engine/builder.EngineBuild.to_manifest) the check reads."""
    return {"builder": builder, "builder_version": version, "compute_capabilities": list(targets)}


def test_the_same_version_on_the_build_gpu_has_no_mismatch():
    assert runtime_mismatches(manifest(), "10.13.0", "SM90 NVIDIA H200") == []


def test_another_version_is_named_with_both_versions():
    (problem,) = runtime_mismatches(manifest(), "10.14.1", "SM90 NVIDIA H200")
    assert "tensorrt 10.13.0" in problem and "10.14.1" in problem


def test_another_gpu_architecture_is_a_mismatch_for_full_tensorrt():
    (problem,) = runtime_mismatches(manifest(), "10.13.0", "SM89 NVIDIA L40S")
    assert "SM90 (NVIDIA H200)" in problem and "SM89 NVIDIA L40S" in problem


def test_both_mismatches_are_reported():
    problems = runtime_mismatches(manifest(), "10.14.1", "SM89 NVIDIA L40S")
    assert len(problems) == 2


def test_a_plan_built_for_several_architectures_runs_on_any_of_them():
    built = manifest(targets=["SM80", "SM86", "SM89"])
    assert runtime_mismatches(built, "10.13.0", "SM86 NVIDIA A10") == []
    assert len(runtime_mismatches(built, "10.13.0", "SM90 NVIDIA H200")) == 1


def test_tensorrt_rtx_plans_are_not_tied_to_the_gpu():
    built = manifest("tensorrt-rtx", "1.7.1.116", ["portable: TensorRT-RTX default set (SM80, SM86, SM89, SM120)"])
    assert runtime_mismatches(built, "1.7.1.116", "SM90 NVIDIA H200") == []
    (problem,) = runtime_mismatches(built, "1.8.0", "SM90 NVIDIA H200")
    assert "tensorrt-rtx 1.7.1.116" in problem


def test_unknown_gpu_or_unrecorded_fields_check_only_what_is_known():
    assert runtime_mismatches(manifest(), "10.13.0", None) == []  # no GPU name: the architecture is not checked
    assert runtime_mismatches({"builder": "tensorrt"}, "10.13.0", "SM89 NVIDIA L40S") == []  # an older manifest
