"""Triton Python-backend model: text in, tokens streamed out (decoupled transaction policy).

Copied into the repository as `<name>/1/model.py` next to a vendored copy of the pure-Python llama_export modules
it needs, so the batched KV loop (validate.batching), sampling (validate.generation) and the in-flight scheduler
(triton.scheduler) are the very code `llama-export generate` runs, not a second implementation. Decoupled with
in-flight batching (the default): execute() queues each request and returns; the scheduler thread decodes every
running request in one batch and streams each one's tokens through its own response sender. Serial mode (config
parameter `scheduler`) and the unary sibling run the same loop inside execute(). The backend's stub ignores PYTHONPATH, hence the
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
from llama_export.errors import UserError
from llama_export.exporter.tokenization import load_tokenizer
from llama_export.triton import protocol
from llama_export.triton.scheduler import InFlightScheduler, Job, Metrics, RequestError
from llama_export.triton.streaming import TextStreamer
from llama_export.validate.batching import Sequence
from llama_export.validate.generation import Sampling


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


class TritonMetrics(Metrics):
    """The scheduler's figures as Triton custom metrics (the server's /metrics endpoint), one label set per
    model instance."""

    TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def __init__(self, labels: dict[str, str]):
        gauge, counter = pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER
        # The families must outlive their metrics: keep both.
        self.families = {
            "queue": pb_utils.MetricFamily(protocol.METRIC_QUEUE, "Requests waiting to join the running batch",
                                           gauge),
            "batch": pb_utils.MetricFamily(protocol.METRIC_BATCH, "Sequences in the running batch", gauge),
            "tokens": pb_utils.MetricFamily(protocol.METRIC_TOKENS, "Tokens generated", counter),
            "ttft": pb_utils.MetricFamily(protocol.METRIC_TTFT, "Seconds from request to its first token",
                                          pb_utils.MetricFamily.HISTOGRAM),
        }
        self.queue = self.families["queue"].Metric(labels=labels)
        self.batch = self.families["batch"].Metric(labels=labels)
        self.tokens = self.families["tokens"].Metric(labels=labels)
        self.ttft = self.families["ttft"].Metric(labels=labels, buckets=list(self.TTFT_BUCKETS))

    def queued(self, length):
        self.queue.set(length)

    def running(self, batch_size):
        self.batch.set(batch_size)

    def generated(self, tokens):
        self.tokens.increment(tokens)

    def first_token(self, seconds):
        self.ttft.observe(seconds)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.args = ModelArgs.from_dict(json.loads(params[protocol.PARAM_MODEL_ARGS]))
        self.max_input = int(params[protocol.PARAM_MAX_INPUT])
        self.max_seq = int(params[protocol.PARAM_MAX_SEQ])
        self.tokenizer = load_tokenizer(HERE)  # the files the repository writer copied next to this model.py
        self.stop_ids = self.tokenizer.stop_ids
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        if protocol.PARAM_ONNX_MODEL in params:
            from llama_export.validate.runners import OrtRunner

            repository = Path(args["model_repository"]).parent  # model_repository is this model's own folder
            spinning = {"session.intra_op.allow_spinning": params.get(protocol.PARAM_ORT_SPINNING, "1")}
            self.runner = OrtRunner(repository / params[protocol.PARAM_ONNX_MODEL], self.args,
                                    intra_op_threads=int(params.get(protocol.PARAM_ORT_THREADS, "0")),
                                    session_config=spinning)
        else:
            self.runner = BlsRunner(params[protocol.PARAM_PLAN_MODEL], self.args, params[protocol.PARAM_KV_DTYPE])
        self.in_flight = self.decoupled and params.get(protocol.PARAM_SCHEDULER) == protocol.SCHEDULER_IN_FLIGHT
        max_batch = int(params.get(protocol.PARAM_MAX_BATCH, "1"))
        max_tokens = int(params.get(protocol.PARAM_MAX_TOKENS, str(max_batch * self.max_seq)))
        metrics = TritonMetrics({"model": args["model_name"], "instance": args["model_instance_name"]})
        # Padded tokens per prefill call; by default the longest prompt: no longer a pause for the running rows
        # than one request alone may cause (scheduler.py's docstring).
        max_prefill = int(params.get(protocol.PARAM_MAX_PREFILL, str(self.max_input)))
        self.scheduler = InFlightScheduler(self.runner, max_batch, max_tokens, metrics, max_prefill_tokens=max_prefill)

    def execute(self, requests):
        if not self.decoupled:  # the unary sibling (HTTP cannot call decoupled models): one response each
            return self._complete(requests)
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self._job(request, *_sender_callbacks(sender, bool(_scalar(request, protocol.STREAM, False))))
                if self.in_flight:
                    self.scheduler.submit(job)  # returns at once: the scheduler thread answers
                else:
                    self.scheduler.run([job])  # serial: this request to the end, then the next
            except RequestError as exc:
                _fail(sender, str(exc))
            except Exception as exc:  # noqa: BLE001 - any failure must end the stream, never hang the client
                _fail(sender, f"{type(exc).__name__}: {exc}")
        return None

    def finalize(self):
        self.scheduler.shutdown()

    def _complete(self, requests):
        """Unary: this execute call's requests decode as one batch; one response each."""
        responses = [None] * len(requests)
        jobs = []
        for i, request in enumerate(requests):
            def respond(text, ids, final, i=i):
                responses[i] = _response(text, ids)

            def fail(message, i=i):
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))

            try:
                jobs.append(self._job(request, respond, fail, stream=False))
            except Exception as exc:  # noqa: BLE001 - the error goes back to the client as the response
                fail(str(exc) if isinstance(exc, RequestError) else f"{type(exc).__name__}: {exc}")
        self.scheduler.run(jobs)
        return responses

    def _job(self, request, respond, fail, cancelled=lambda: False, stream=False):
        """Check the request and make its scheduler job (RequestError names what is wrong)."""
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
        try:
            ids = self.tokenizer.prompt_ids(prompt, chat=bool(_scalar(request, protocol.CHAT, False)))
        except UserError as exc:  # chat without a template, or a template that refused the message
            raise RequestError(f"{protocol.CHAT}: {exc}") from None
        if len(ids) > self.max_input:
            raise RequestError(f"the prompt is {len(ids)} tokens; this model takes at most {self.max_input}")
        if not ids:
            raise RequestError("the prompt encodes to no tokens")
        sequence = Sequence(ids, max_new, sampling, self.stop_ids, max_length=self.max_seq)
        streamer = TextStreamer(self.tokenizer.decode, ids, _strings(request, protocol.STOP))
        return Job(sequence, streamer, respond, fail, cancelled, stream=stream)


def _fail(sender, message):
    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _sender_callbacks(sender, stream: bool):
    """(respond, fail, cancelled, stream) for a decoupled request. Streaming sends each piece as its own response
    and the final flag alone (clients stop reading at the flag); otherwise one final response with everything."""
    final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

    def respond(text, ids, last):
        if not stream:
            sender.send(_response(text, ids), flags=final)
            return
        if text or ids:
            sender.send(_response(text, ids))
        if last:
            sender.send(flags=final)

    return respond, lambda message: _fail(sender, message), sender.is_cancelled, stream
