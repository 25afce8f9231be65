"""One tokenizer interface over three file formats, auto-detected from a folder (see detect.py for the order):
SentencePiece tokenizer.model, Hugging Face tokenizer.json, Meta Llama 3 tiktoken tokenizer.model. Stop ids and chat
templates come from the companion files next to them (base.py, chat.py)."""

from .base import Tokenizer
from .chat import render_chat
from .detect import KINDS, detect, find_tokenizer, load_tokenizer

__all__ = ["KINDS", "Tokenizer", "detect", "find_tokenizer", "load_tokenizer", "render_chat"]
