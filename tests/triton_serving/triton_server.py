"""A real `tritonserver` for the tests: nvidia-pytriton's 2.51 binary (python backend only), on loopback, on CPU.

The server lives in its own venv (pytriton pins numpy < 2) and so must the Python-backend stub: the stub embeds
libpython and imports numpy before model.py runs, and a numpy-2 interpreter corrupts BYTES tensors in the stub
(measured: "unpack_from requires a buffer of at least 286331157 bytes"). The stub finds its interpreter as
`python3` on PATH, so putting the venv's bin first on PATH makes it load the venv's site-packages (numpy 1.26,
onnxruntime and the tokenizer libraries); LD_LIBRARY_PATH gives it the base interpreter's libpython and the server's libs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

VENV = Path(os.environ.get("LLAMA_EXPORT_TRITON_VENV", Path.home() / ".cache" / "llama-export" / "tritonvenv"))
# The front end's tokenizer kinds need sentencepiece, tokenizers (tokenizer.json) and tiktoken (Llama 3); chat
# templates need jinja2 (>= 3.1.6, as transformers requires for its sandbox fixes).
VENV_PACKAGES = ("nvidia-pytriton", "onnxruntime", "sentencepiece", "tokenizers", "tiktoken", "jinja2>=3.1.6")
PROBE = ("import pytriton, onnxruntime, sentencepiece, tokenizers, tiktoken, jinja2, numpy; "
         "assert numpy.__version__ < '2'")


def load_client_example():
    """examples/triton_client.py as a module: the tests drive the server through the client users are shown."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "triton_client.py"
    spec = importlib.util.spec_from_file_location("triton_client_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _probe(venv: Path) -> bool:
    return _venv_python(venv).exists() and subprocess.run([_venv_python(venv), "-c", PROBE], check=False,
                                                         capture_output=True, timeout=120).returncode == 0


def ensure_venv(venv: Path = VENV, timeout: float = 900) -> Path:
    """Reuse the cached venv when it imports everything (a venv missing only packages added since gets them
    installed in place); else build it in a sibling and rename it into place."""
    if _probe(venv):
        return venv
    if _venv_python(venv).exists():
        subprocess.run([_venv_python(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *VENV_PACKAGES], check=False, timeout=timeout)
        if _probe(venv):
            return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{venv.name}.tmp-", dir=venv.parent))
    try:
        # Built under a temporary name, then renamed: an interrupted install never looks complete. A venv survives
        # the rename for what we use (bin/python finds pyvenv.cfg next to itself; pip runs as `python -m pip`).
        target = staging / venv.name
        subprocess.run([sys.executable, "-m", "venv", target], check=True, timeout=120)
        subprocess.run([_venv_python(target), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *VENV_PACKAGES], check=True, timeout=timeout)
        if venv.exists():
            shutil.rmtree(venv)
        target.rename(venv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    subprocess.run([_venv_python(venv), "-c", PROBE], check=True, timeout=120)
    return venv


def server_paths(venv: Path) -> dict[str, Path]:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = subprocess.run([_venv_python(venv), "-c", "import pytriton, os; print(os.path.dirname(pytriton.__file__))"],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    root = Path(out) / "tritonserver"
    return {"binary": root / "bin" / "tritonserver", "python_backend": root / "backends" / "python",
            "stub": root / "python_backend_stubs" / version / "triton_python_backend_stub",
            "libs": Path(out).parent / "nvidia_pytriton.libs"}


def backend_directory(paths: dict[str, Path], folder: Path) -> Path:
    """backends/python/ = the backend library + utils + the stub for our Python version (as pytriton lays it out)."""
    python = folder / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in paths["python_backend"].iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    shutil.copy2(paths["stub"], python / "triton_python_backend_stub")
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def libpython_dir() -> str | None:
    """The folder holding the base interpreter's shared libpython (None for a static build: no stub possible)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    return sysconfig.get_config_var("LIBDIR")


class TritonServer:
    """Start on free loopback ports, wait until ready (bounded), always stop (SIGTERM, then SIGKILL)."""

    def __init__(self, venv: Path, repository: Path | list[Path], models: list[str], workdir: Path):
        self.paths = server_paths(venv)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.http_url, self.grpc_url = f"127.0.0.1:{self.http_port}", f"127.0.0.1:{self.grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = workdir / "tritonserver.log"
        backends = backend_directory(self.paths, workdir / "backends")
        lib = libpython_dir()
        env = dict(os.environ)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [lib, str(self.paths["libs"]),
                                                               env.get("LD_LIBRARY_PATH")]))
        repositories = repository if isinstance(repository, list) else [repository]
        self.command = [str(self.paths["binary"]), *(f"--model-repository={r}" for r in repositories),
                        f"--backend-directory={backends}", "--model-control-mode=explicit",
                        *(f"--load-model={m}" for m in models), "--http-address=127.0.0.1",
                        "--grpc-address=127.0.0.1", f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                        "--allow-metrics=true", "--allow-gpu-metrics=false", "--metrics-address=127.0.0.1",
                        f"--metrics-port={self.metrics_port}", "--exit-timeout-secs=5", "--log-verbose=0"]
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        import tritonclient.http as httpclient

        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        client = httpclient.InferenceServerClient(self.http_url, connection_timeout=2, network_timeout=2)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
                if self._ready(client):
                    return
                time.sleep(0.25)
        finally:
            client.close()
        raise TimeoutError(f"tritonserver not ready after {timeout} s:\n{self.log_tail()}")

    @staticmethod
    def _ready(client) -> bool:
        try:
            return client.is_server_ready()
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    def stop(self, timeout: float = 20) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def metrics(self) -> str:
        """The Prometheus text of the metrics endpoint."""
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode()

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""
