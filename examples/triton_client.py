"""Talk to a repository written by `llama-export triton`: a unary HTTP request, then token streaming over gRPC.

    tritonserver --model-repository REPO --model-control-mode explicit \\
        --load-model tiny_generate --load-model tiny_complete
    python examples/triton_client.py --model tiny --prompt "The for statement"

HTTP calls `<model>_complete` (Triton's HTTP infer endpoint refuses decoupled models); gRPC streams from the
decoupled `<model>_generate`, one response per token. Needs `pip install "tritonclient[grpc,http]"`.
"""

from __future__ import annotations

import argparse
import queue
import sys
from collections.abc import Iterator

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

# The front end's tensor names (llama_export/triton/protocol.py); repeated so this file runs without llama_export.
TEXT_INPUT, MAX_NEW_TOKENS, TEMPERATURE, TOP_P, SEED, STOP, STREAM, CHAT = (
    "text_input", "max_new_tokens", "temperature", "top_p", "seed", "stop", "stream", "chat")
TEXT_OUTPUT, TOKEN_IDS = "text_output", "token_ids"


def _inputs(module, prompt: str, max_new_tokens: int, temperature: float, top_p: float, seed: int,
            stop: list[str], stream: bool | None, chat: bool = False) -> list:
    values = [(TEXT_INPUT, np.array([prompt.encode()], dtype=np.object_), "BYTES"),
              (MAX_NEW_TOKENS, np.array([max_new_tokens], dtype=np.int32), "INT32"),
              (TEMPERATURE, np.array([temperature], dtype=np.float32), "FP32"),
              (TOP_P, np.array([top_p], dtype=np.float32), "FP32"),
              (SEED, np.array([seed], dtype=np.int64), "INT64")]
    if stop:
        values.append((STOP, np.array([s.encode() for s in stop], dtype=np.object_), "BYTES"))
    if stream is not None:
        values.append((STREAM, np.array([stream], dtype=bool), "BOOL"))
    if chat:  # the prompt is a user message, wrapped in the model's chat template by the server
        values.append((CHAT, np.array([True], dtype=bool), "BOOL"))
    tensors = []
    for name, array, dtype in values:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def complete(url: str, model: str, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, stop: list[str] = (), timeout: float = 60.0,
             chat: bool = False) -> tuple[str, list[int]]:
    """One HTTP request to `<model>_complete` → (generated text, token ids)."""
    with httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout) as client:
        result = client.infer(f"{model}_complete",
                              _inputs(httpclient, prompt, max_new_tokens, temperature, top_p, seed, list(stop), None,
                                      chat),
                              outputs=[httpclient.InferRequestedOutput(TEXT_OUTPUT),
                                       httpclient.InferRequestedOutput(TOKEN_IDS)])
    return result.as_numpy(TEXT_OUTPUT)[0].decode(), result.as_numpy(TOKEN_IDS).tolist()


def stream(url: str, model: str, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0,
           top_p: float = 1.0, seed: int = 0, stop: list[str] = (), timeout: float = 60.0,
           chat: bool = False) -> Iterator[tuple[str, list[int]]]:
    """gRPC stream from `<model>_generate`: yields (new text, token ids) as the server produces them."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)), stream_timeout=timeout)
        client.async_stream_infer(f"{model}_generate",
                                  _inputs(grpcclient, prompt, max_new_tokens, temperature, top_p, seed, list(stop), True,
                                          chat),
                                  enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return
            yield result.as_numpy(TEXT_OUTPUT)[0].decode(), result.as_numpy(TOKEN_IDS).tolist()
    finally:
        client.stop_stream()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model name prefix (llama-export triton --name)")
    parser.add_argument("--prompt", default="The for statement")
    parser.add_argument("--http", default="127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--chat", action="store_true", help="the prompt is a user message (model's chat template)")
    options = parser.parse_args()
    settings = {"max_new_tokens": options.max_new_tokens, "temperature": options.temperature, "top_p": options.top_p,
                "stop": options.stop, "chat": options.chat}
    text, ids = complete(options.http, options.model, options.prompt, **settings)
    echo = "" if options.chat else options.prompt  # a chat reply does not continue the prompt
    print(f"HTTP  ({len(ids)} tokens): {echo}{text}")
    print("gRPC  (streamed): " + echo, end="", flush=True)
    for piece, _ in stream(options.grpc, options.model, options.prompt, **settings):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    sys.exit(main())
