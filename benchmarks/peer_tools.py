"""Run the peer exporters (HF Optimum, onnxruntime-genai's model builder) on a local HF checkpoint.

Used by the peer benchmark to compare against `llama-export export` on CPU. Every export runs in a child
process of a separate venv's python (never the project's environment) and is measured per child: wall time,
and peak RSS from `os.wait4(pid, 0)` -> `ru_maxrss` (KiB on Linux; the kernel reports the max over the child
and the descendants it waited for, not a sum, and never this process's own memory).

Venvs (`ensure_peer_venv`): two, side by side under one root, because the peers' transformers pins conflict:
optimum-onnx 0.1.0 requires transformers<4.58, while the onnxruntime-genai 0.18 builder imports
`Qwen3_5ForConditionalGeneration`, which transformers 4.57 lacks (ImportError at `import builder`).

    <root>/optimum/   python -m pip install torch==2.13.0          (first: the local CPU wheel, never CUDA)
                      python -m pip install torch==2.13.0 <OPTIMUM_PACKAGES>
    <root>/genai/     python -m pip install torch==2.13.0
                      python -m pip install torch==2.13.0 <GENAI_PACKAGES>

  OPTIMUM_PACKAGES  optimum-onnx==0.1.0 optimum==2.1.0 transformers==4.57.6 tokenizers==0.22.2
                    huggingface-hub==0.36.2 onnx==1.23.2 onnxruntime==1.32.0
  GENAI_PACKAGES    onnxruntime-genai==0.18.0 onnxruntime==1.32.0 transformers==5.24.0 tokenizers==0.23.3
                    huggingface-hub==2.4.0 onnx==1.23.2 onnx-ir==1.1.0 sentencepiece==0.2.3
  onnx-ir: the 0.18 builder imports it, its wheel does not declare it. sentencepiece: only to turn a
  tokenizer.model into tokenizer.json. Each venv is built under a temporary sibling name and renamed into
  place. Console scripts in bin/ keep the staging path in their shebang, so everything runs as `python -m`.

Commands (env: HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1, PYTHONPATH unset; nothing is downloaded):

  export_optimum, validate=True (default):
      <root>/optimum/bin/python -m optimum.commands.optimum_cli export onnx -m <input> \\
          --task text-generation-with-past [--optimize O1|O2|O3] <out_dir>
    The CLI always runs Optimum's validation afterwards (ORT vs torch on dummy inputs), inside wall_s.
    validate=False instead runs, in the same venv:
      python -c "from optimum.exporters.onnx import main_export; main_export('<input>', '<out_dir>',
                 task='text-generation-with-past', do_validation=False[, optimize=...])"
    Tokenizer: not needed (Optimum tries AutoTokenizer and silently skips it when absent).
  export_genai:
      <root>/genai/bin/python -m onnxruntime_genai.models.builder -i <input> -o <out_dir> \\
          -p fp32|int4|int8 -e cpu -c <tmp dir> [--extra_options block_size=N accuracy_level=N]
    int4/int8 defaults: block_size=32, accuracy_level=4 (CPU), symmetric RTN; every MatMul incl. lm_head
    becomes com.microsoft.MatMulNBits, the embedding Gather stays fp32.
    Tokenizer: REQUIRED (the builder calls AutoTokenizer.from_pretrained on its input and fails with
    "Couldn't instantiate the backend tokenizer ..." otherwise). When hf_dir has neither tokenizer.json nor
    tokenizer.model, a tokenizer.json is made beforehand (untimed, in the genai venv) from `tokenizer_model`
    (default: the project's tiny sentencepiece model, vocab 2048 - fine for export) and staged.

<input> is hf_dir unless something must change; then it is a temporary folder of symlinks to hf_dir's files
plus the generated tokenizer and/or a patched config.json: transformers>=5 writes `rope_parameters` instead of
`rope_theta`/`rope_scaling`, which transformers 4.57 (Optimum's venv) ignores - it silently exports with the
default rope_theta 10000 - so those legacy keys are added for Optimum. hf_dir itself is never modified.

Measured on 2 shared cores, LLaMA hidden 768, 12 heads / 4 kv heads, ffn 2048, vocab 32000, fp32 weights
(wall s / peak RSS GB):      2 layers       12 layers
  optimum (CLI, validates)   17.8-18.6/1.41   28.8/2.47     (--optimize O2, 2 layers: 26.3/1.55)
  genai fp32                  9.8-12.6/0.79   11.4/1.08
  genai int4                 13.2-14.4/1.09   15.4/1.68
  genai int8                 11.8-13.0/1.15   13.0/1.77
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TORCH = "torch==2.13.0"
OPTIMUM_PACKAGES = ["optimum-onnx==0.1.0", "optimum==2.1.0", "transformers==4.57.6", "tokenizers==0.22.2",
                    "huggingface-hub==0.36.2", "onnx==1.23.2", "onnxruntime==1.32.0"]
GENAI_PACKAGES = ["onnxruntime-genai==0.18.0", "onnxruntime==1.32.0", "transformers==5.24.0",
                  "tokenizers==0.23.3", "huggingface-hub==2.4.0", "onnx==1.23.2", "onnx-ir==1.1.0",
                  "sentencepiece==0.2.3"]
VENVS = {"optimum": OPTIMUM_PACKAGES, "genai": GENAI_PACKAGES}
IMPORTS = {"optimum": ["torch", "transformers", "onnxruntime", "optimum.exporters.onnx",
                       "optimum.commands.optimum_cli"],
           "genai": ["torch", "transformers", "onnxruntime", "onnx_ir", "onnxruntime_genai", "sentencepiece"]}
DEFAULT_VENV = Path.home() / ".cache" / "llama-export" / "peersvenv"
TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "llama_export" / "assets" / "tiny" / "tokenizer.model"
TASK = "text-generation-with-past"
GENAI_PRECISIONS = ("fp32", "int4", "int8")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def venv_python(venv: Path, kind: str | None = None) -> Path:
    return (venv / kind if kind else venv) / "bin" / "python"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OFFLINE_ENV)
    env.update(extra or {})
    return env


def _probe_code(kind: str) -> str:
    """Imports everything and checks every pinned version (and that torch is the CPU build)."""
    pins = {p.split("==")[0]: p.split("==")[1] for p in [TORCH, *VENVS[kind]]}
    return ("import importlib, importlib.metadata as md, sys\n"
            f"for m in {IMPORTS[kind]!r}: importlib.import_module(m)\n"
            f"bad = {{n: md.version(n) for n, v in {pins!r}.items() if md.version(n).split('+')[0] != v}}\n"
            "import torch\n"
            "if torch.version.cuda: bad['torch.version.cuda'] = torch.version.cuda\n"
            "sys.exit(f'version mismatch: {bad}' if bad else 0)\n")


def _probe(venv: Path, kind: str) -> subprocess.CompletedProcess | None:
    python = venv_python(venv, kind)
    if not python.exists():
        return None
    return subprocess.run([python, "-c", _probe_code(kind)], check=False, capture_output=True, text=True,
                          timeout=300, env=child_env())


def ensure_peer_venv(path: Path = DEFAULT_VENV, timeout: float = 1800) -> Path:
    """Return `path`, holding the <path>/optimum and <path>/genai venvs; (re)build whichever does not probe.

    Each is built as <path>/.<kind>.tmp-*/<kind> and renamed into place at the end, so an interrupted install
    never looks complete. torch==2.13.0 goes in first (the CPU wheel) and is repeated in the second install so
    that no peer requirement can swap it for a CUDA build.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for kind, packages in VENVS.items():
        probe = _probe(path, kind)
        if probe is not None and probe.returncode == 0:
            continue
        venv = path / kind
        staging = Path(tempfile.mkdtemp(prefix=f".{kind}.tmp-", dir=path))
        try:
            target = staging / kind
            subprocess.run([sys.executable, "-m", "venv", target], check=True, timeout=300)
            pip = [venv_python(target), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, TORCH], check=True, timeout=timeout)
            subprocess.run([*pip, TORCH, *packages], check=True, timeout=timeout)
            if venv.exists():
                shutil.rmtree(venv)
            target.rename(venv)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        probe = _probe(path, kind)
        if probe is None or probe.returncode:
            raise RuntimeError(f"peer venv {venv} does not probe clean: {probe and probe.stderr[-2000:]}")
    return path


def _tail(log: Path, n: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def measure_child(cmd: list, log: Path, timeout: float, env: dict[str, str]) -> tuple[float, int, int]:
    """Run cmd as a child in its own process group; (wall_s, peak_rss_bytes, exit code) via os.wait4."""
    cmd = [str(c) for c in cmd]
    with open(log, "wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen from waiting again
    if timed_out.is_set():
        raise TimeoutError(f"`{' '.join(cmd[:4])} ...` ran past {timeout} s; log: {_tail(log)}")
    return wall, usage.ru_maxrss * 1024, proc.returncode


def _prepare_out(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty (pass overwrite=True to replace it)")
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir


def _legacy_rope_config(config: dict) -> dict | None:
    """transformers>=5 `rope_parameters` -> the `rope_theta`/`rope_scaling` that transformers 4.57 reads."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope or "rope_theta" in config:
        return None
    patched = dict(config)
    patched["rope_theta"] = rope["rope_theta"]
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    patched["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    return patched


def _stage(hf_dir: Path, work: Path, config: dict | None = None, tokenizer_from: Path | None = None,
           venv: Path | None = None) -> Path:
    """A folder of symlinks to hf_dir's files, with a replaced config.json and/or a generated tokenizer."""
    staged = work / "input"
    staged.mkdir()
    for item in hf_dir.iterdir():
        (staged / item.name).symlink_to(item.resolve())
    if config is not None:
        (staged / "config.json").unlink()
        (staged / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer_from is not None:
        src = work / "spm"
        src.mkdir()
        shutil.copy2(tokenizer_from, src / "tokenizer.model")
        code = ("import sys; from transformers import LlamaTokenizer; "
                "LlamaTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])")
        done = subprocess.run([venv_python(venv, "genai"), "-c", code, src, staged], check=False,
                              capture_output=True, text=True, timeout=600, env=child_env())
        if done.returncode or not (staged / "tokenizer.json").exists():
            raise RuntimeError(f"could not make tokenizer.json from {tokenizer_from}: {done.stderr[-2000:]}")
    return staged


def _result(out_dir: Path, wall: float, rss: int, cmd: list, log: Path, staged: bool) -> dict:
    model = out_dir / "model.onnx"
    if not model.exists():
        raise RuntimeError(f"no {model} after `{' '.join(map(str, cmd))}`; log: {_tail(log)}")
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    onnx_files = [p for p in files if p.name in ("model.onnx", "model.onnx.data", "model.onnx_data")]
    return {"wall_s": wall, "peak_rss_bytes": rss, "model_path": model,
            "files_bytes": sum(p.stat().st_size for p in files),        # everything in out_dir
            "onnx_bytes": sum(p.stat().st_size for p in onnx_files),    # model.onnx + its external data
            "command": [str(c) for c in cmd], "staged_input": staged, "log_tail": _tail(log, 2000)}


def export_optimum(hf_dir: Path, out_dir: Path, venv: Path = DEFAULT_VENV, *, validate: bool = True,
                   optimize: str | None = None, overwrite: bool = False, timeout: float = 3600,
                   env: dict[str, str] | None = None) -> dict:
    """Optimum ONNX export (text-generation-with-past) of hf_dir into out_dir/model.onnx; see the module doc.

    Returns {"wall_s", "peak_rss_bytes", "model_path", "files_bytes", "onnx_bytes", "command",
    "staged_input", "log_tail"}.
    """
    if optimize not in (None, "O1", "O2", "O3"):
        raise ValueError(f"optimize must be None, O1, O2 or O3 on CPU, not {optimize!r}")
    hf_dir, venv = Path(hf_dir).resolve(), Path(venv)
    out_dir = _prepare_out(Path(out_dir).resolve(), overwrite)
    patched = _legacy_rope_config(json.loads((hf_dir / "config.json").read_text()))
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.peer-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        source = _stage(hf_dir, work, config=patched) if patched else hf_dir
        python = venv_python(venv, "optimum")
        if validate:
            cmd = [python, "-m", "optimum.commands.optimum_cli", "export", "onnx", "-m", source,
                   "--task", TASK, *(["--optimize", optimize] if optimize else []), out_dir]
        else:
            call = (f"main_export({str(source)!r}, {str(out_dir)!r}, task={TASK!r}, do_validation=False"
                    + (f", optimize={optimize!r}" if optimize else "") + ")")
            cmd = [python, "-c", f"from optimum.exporters.onnx import main_export; {call}"]
        log = work / "export.log"
        wall, rss, rc = measure_child(cmd, log, timeout, child_env(env))
        if rc:
            raise RuntimeError(f"optimum export failed (exit {rc}): {_tail(log)}")
        return _result(out_dir, wall, rss, cmd, log, staged=bool(patched))


def export_genai(hf_dir: Path, out_dir: Path, venv: Path = DEFAULT_VENV, precision: str = "fp32", *,
                 block_size: int | None = None, accuracy_level: int | None = None,
                 tokenizer_model: Path = TINY_TOKENIZER, overwrite: bool = False, timeout: float = 3600,
                 env: dict[str, str] | None = None) -> dict:
    """onnxruntime-genai builder (CPU EP) of hf_dir into out_dir/ (model.onnx + .data + genai_config.json).

    Same result keys as export_optimum. block_size / accuracy_level go to --extra_options (int4/int8 only).
    """
    if precision not in GENAI_PRECISIONS:
        raise ValueError(f"precision must be one of {GENAI_PRECISIONS} for the CPU EP, not {precision!r}")
    extra = [f"{k}={v}" for k, v in (("block_size", block_size), ("accuracy_level", accuracy_level))
             if v is not None]
    if extra and precision == "fp32":
        raise ValueError("block_size / accuracy_level only apply to int4 / int8")
    hf_dir, venv = Path(hf_dir).resolve(), Path(venv)
    out_dir = _prepare_out(Path(out_dir).resolve(), overwrite)
    has_tokenizer = any((hf_dir / n).exists() for n in ("tokenizer.json", "tokenizer.model"))
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.peer-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        source = hf_dir if has_tokenizer else _stage(hf_dir, work, tokenizer_from=Path(tokenizer_model),
                                                     venv=venv)
        cmd = [venv_python(venv, "genai"), "-m", "onnxruntime_genai.models.builder", "-i", source, "-o", out_dir,
               "-p", precision, "-e", "cpu", "-c", work / "cache",
               *(["--extra_options", *extra] if extra else [])]
        log = work / "export.log"
        wall, rss, rc = measure_child(cmd, log, timeout, child_env(env))
        if rc:
            raise RuntimeError(f"genai builder failed (exit {rc}): {_tail(log)}")
        return _result(out_dir, wall, rss, cmd, log, staged=not has_tokenizer)


if __name__ == "__main__":  # python benchmarks/peer_tools.py HF_DIR OUT_ROOT -> one JSON line per export
    root = ensure_peer_venv()
    hf, out = Path(sys.argv[1]), Path(sys.argv[2])
    runs = {"optimum": lambda: export_optimum(hf, out / "optimum", root, overwrite=True)}
    runs.update({f"genai-{p}": (lambda p=p: export_genai(hf, out / f"genai-{p}", root, p, overwrite=True))
                 for p in GENAI_PRECISIONS})
    for name, run in runs.items():
        result = run()
        print(json.dumps({"peer": name, **{k: str(v) if isinstance(v, Path) else v
                                           for k, v in result.items() if k != "log_tail"}}), flush=True)
