"""Triton Python-backend model: text in, tokens streamed out (decoupled transaction policy).

Copied into the repository as `<name>/1/model.py` next to a vendored copy of the pure-Python llama_export modules
it needs, so the prefill/decode KV loop (validate.runners.KVSession) and sampling (validate.generation) are the very
code `llama-export generate` runs, not a second implementation. The backend's stub ignores PYTHONPATH, hence the
sys.path line. CPU variant: ONNX Runtime in-process. GPU variant: each forward is a BLS call to the tensorrt_plan
model (prefill and decode shapes select the engine's profiles).
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the vendored llama_export wins over any installed one

import numpy as np
import triton_python_backend_utils as pb_utils

from llama_export import io_spec
from llama_export.config import ModelArgs
from llama_export.exporter.tokenizer import Tokenizer
from llama_export.triton import protocol
from llama_export.triton.streaming import TextStreamer
from llama_export.validate.generation import Sampling, generate_tokens


class BlsRunner:
    """The tensorrt_plan model as a llama_export Runner, through Business Logic Scripting."""

    name = "trt-bls"

    def __init__(self, model_name: str, args: ModelArgs, kv_dtype: str):
        self.model_name, self.args = model_name, args
        if kv_dtype == "bfloat16":  # numpy has no bfloat16 of its own; ml_dtypes (an onnx dependency) does
            import ml_dtypes

            self.kv_dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            self.kv_dtype = np.dtype(kv_dtype)
        self._outputs = io_spec.output_names(args.n_layers)

    def run(self, feeds):
        inputs = [pb_utils.Tensor(name, np.ascontiguousarray(feeds[name]))
                  for name in io_spec.input_names(self.args.n_layers)]
        request = pb_utils.InferenceRequest(
            model_name=self.model_name, inputs=inputs, requested_output_names=self._outputs,
            # KVSession threads the cache through numpy: ask for host memory (round trip per step; see README).
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.model_name}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self._outputs}


class RequestError(ValueError):
    """A request the client got wrong; its message goes back as the response error."""


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got {values.size}")
    value = values[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]


def _response(text: str, ids):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor(protocol.TEXT_OUTPUT, np.array([text.encode("utf-8")], dtype=np.object_)),
        pb_utils.Tensor(protocol.TOKEN_IDS, np.asarray(ids, dtype=np.int64).reshape(-1)),
    ])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.args = ModelArgs.from_dict(json.loads(params[protocol.PARAM_MODEL_ARGS]))
        self.max_input = int(params[protocol.PARAM_MAX_INPUT])
        self.max_seq = int(params[protocol.PARAM_MAX_SEQ])
        self.tokenizer = Tokenizer(HERE / protocol.TOKENIZER_FILE)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        if protocol.PARAM_ONNX_MODEL in params:
            from llama_export.validate.runners import OrtRunner

            repository = Path(args["model_repository"]).parent  # model_repository is this model's own folder
            self.runner = OrtRunner(repository / params[protocol.PARAM_ONNX_MODEL], self.args,
                                    intra_op_threads=int(params.get(protocol.PARAM_ORT_THREADS, "0")))
        else:
            self.runner = BlsRunner(params[protocol.PARAM_PLAN_MODEL], self.args, params[protocol.PARAM_KV_DTYPE])

    def execute(self, requests):
        if not self.decoupled:  # the unary sibling (HTTP cannot call decoupled models): one response each
            return [self._complete(request) for request in requests]
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._stream(request, sender)
            except RequestError as exc:
                self._fail(sender, str(exc))
            except Exception as exc:  # noqa: BLE001 - any failure must end the stream, never hang the client
                self._fail(sender, f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _fail(sender, message):
        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _complete(self, request):
        try:
            text, ids = _joined(self._generate(request))
            return _response(text, ids)
        except Exception as exc:  # noqa: BLE001 - the error goes back to the client as the response
            message = str(exc) if isinstance(exc, RequestError) else f"{type(exc).__name__}: {exc}"
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))

    def _stream(self, request, sender):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        pieces = self._generate(request)
        if not bool(_scalar(request, protocol.STREAM, False)):
            text, ids = _joined(pieces)
            sender.send(_response(text, ids), flags=final)
            return
        for text, ids in pieces:
            sender.send(_response(text, ids))
        sender.send(flags=final)

    def _generate(self, request):
        """Check the request, then yield (new text, [token id]) per token and a last (held-back text, [])."""
        prompt = _scalar(request, protocol.TEXT_INPUT, None)
        if prompt is None:
            raise RequestError(f"{protocol.TEXT_INPUT} is missing: send the prompt as a 1-element BYTES tensor")
        if not isinstance(prompt, str):
            raise RequestError(f"{protocol.TEXT_INPUT} must be a UTF-8 string")
        max_new = int(_scalar(request, protocol.MAX_NEW_TOKENS, protocol.DEFAULT_MAX_NEW_TOKENS))
        sampling = Sampling(float(_scalar(request, protocol.TEMPERATURE, 0.0)),
                            float(_scalar(request, protocol.TOP_P, 1.0)), int(_scalar(request, protocol.SEED, 0)))
        if max_new < 0 or sampling.temperature < 0 or not 0 < sampling.top_p <= 1:
            raise RequestError("need max_new_tokens >= 0, temperature >= 0 and 0 < top_p <= 1")
        ids = self.tokenizer.encode(prompt)
        if len(ids) > self.max_input:
            raise RequestError(f"the prompt is {len(ids)} tokens; this model takes at most {self.max_input}")
        streamer = TextStreamer(self.tokenizer.decode, ids, _strings(request, protocol.STOP))
        return self._pieces(streamer, generate_tokens(
            self.runner, ids, max_new, sampling, stop_ids=frozenset({self.tokenizer.eos_id}),
            max_length=self.max_seq))

    @staticmethod
    def _pieces(streamer, tokens):
        for token in tokens:
            yield streamer.push(token), [token]
            if streamer.stopped:
                return
        tail = streamer.finish()
        if tail:
            yield tail, []


def _joined(pieces):
    pieces = list(pieces)
    return "".join(text for text, _ in pieces), [token for _, ids in pieces for token in ids]
