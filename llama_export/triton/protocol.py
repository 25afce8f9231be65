"""The generation front end's request/response contract: tensor names, defaults and config parameter keys.

Shared by the config writer (configs.py), the Python-backend model (frontend_model.py, which gets a vendored copy
of this file) and clients, so the three can never disagree on a name.
"""

from __future__ import annotations

# Inputs. Every one is a 1-element tensor (max_batch_size 0: no implicit batch dim); all but TEXT_INPUT optional.
TEXT_INPUT = "text_input"  # TYPE_STRING [1]: the prompt
MAX_NEW_TOKENS = "max_new_tokens"  # TYPE_INT32 [1]
TEMPERATURE = "temperature"  # TYPE_FP32 [1]; 0 = greedy
TOP_P = "top_p"  # TYPE_FP32 [1]
SEED = "seed"  # TYPE_INT64 [1]: sampling seed
STOP = "stop"  # TYPE_STRING [-1]: stop strings; the text ends before the first one found
STREAM = "stream"  # TYPE_BOOL [1]: true = one response per token; false = one response with everything
CHAT = "chat"  # TYPE_BOOL [1]: true = text_input is a user message, wrapped in the tokenizer's chat template

# Outputs of each response.
TEXT_OUTPUT = "text_output"  # TYPE_STRING [1]: new text since the previous response
TOKEN_IDS = "token_ids"  # TYPE_INT64 [-1]: the token ids behind that text

DEFAULT_MAX_NEW_TOKENS = 64

# Front-end config `parameters` keys (values are strings, as Triton requires).
PARAM_MODEL_ARGS = "model_args"  # ModelArgs as JSON
PARAM_ONNX_MODEL = "onnx_model"  # CPU variant: ONNX file, relative to the repository root
PARAM_PLAN_MODEL = "plan_model"  # GPU variant: the tensorrt_plan model called through BLS
PARAM_KV_DTYPE = "kv_dtype"  # numpy dtype name of the KV cache
PARAM_MAX_INPUT = "max_input"  # longest prompt in tokens (engine profile limit, or context - 1)
PARAM_MAX_SEQ = "max_seq"  # KV capacity: prompt + generated tokens
PARAM_ORT_THREADS = "ort_intra_op_threads"
PARAM_ORT_SPINNING = "ort_allow_spinning"  # "0": ORT's idle threads sleep (the scheduler and gRPC need the cores)
PARAM_SCHEDULER = "scheduler"  # SCHEDULER_IN_FLIGHT or SCHEDULER_SERIAL (decoupled front end)
PARAM_MAX_BATCH = "max_batch"  # most sequences decoding together
PARAM_MAX_TOKENS = "max_tokens_in_flight"  # most KV tokens reserved (prompt + max_new_tokens) over the batch
PARAM_MAX_PREFILL = "max_prefill_tokens"  # most padded tokens in one prefill call (joiners x longest prompt)
PARAM_TENSORRT_VERSION = "tensorrt_version"  # on the tensorrt_plan model: the builder that made the engine
SCHEDULER_IN_FLIGHT = "in_flight"  # execute() queues; a scheduler thread batches every running request
SCHEDULER_SERIAL = "serial"  # execute() runs each request to the end before the next (the benchmark baseline)

# Triton custom metrics the front end reports (labels: model, instance).
METRIC_QUEUE = "llama_export_queue_length"  # gauge: requests waiting to join the batch
METRIC_BATCH = "llama_export_batch_size"  # gauge: sequences in the running batch
METRIC_TOKENS = "llama_export_generated_tokens"  # counter
METRIC_TTFT = "llama_export_time_to_first_token_seconds"  # histogram

# The tokenizer's files (manifest.json "tokenizer": kind + files) lie next to model.py, found as in any folder.
