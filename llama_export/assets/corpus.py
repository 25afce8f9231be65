"""The tiny model's training corpus: English text that ships with Python itself, so it needs no download.

Documents, in a fixed order:
- every help topic of `pydoc_data.topics.topics` (the language reference as `help()` shows it), sorted by key;
- the docstrings of a fixed list of standard-library modules and of their public classes, functions and methods.

A document is held out when crc32 of its key is 0 mod 20 (7% of the text on Python 3.11), so the split is by whole
documents, is the same on every run, and does not shift when the Python version adds or drops other documents.
The docstrings are read in a fresh bare interpreter (see documents()), so imported libraries cannot change them;
the text does depend on the Python version and, for a few modules (os, signal), the platform.
`tools/train_tiny.py` records the version used and a hash of the text.

    from llama_export.assets.corpus import corpus
    train_text, heldout_text = corpus()
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import subprocess
import sys
import warnings
import zlib

# Always-built modules only (no sqlite3, zlib, ssl, tkinter, nothing that imports readline) that exist from Python
# 3.10 to 3.13, so every CPython build yields the same set. ~1.3 MB of docstrings next to the ~0.5 MB of help
# topics: a 4M-parameter model over-fits the topics alone within minutes.
MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "asyncio.base_events", "asyncio.events", "asyncio.locks",
    "asyncio.protocols", "asyncio.queues", "asyncio.streams", "asyncio.tasks", "asyncio.transports", "base64",
    "bdb", "binascii", "bisect", "builtins", "calendar", "cmath", "cmd", "code", "codecs", "codeop",
    "collections", "collections.abc", "compileall", "concurrent.futures.process", "configparser", "contextlib",
    "contextvars", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest",
    "email.charset", "email.header", "email.headerregistry", "email.message", "email.parser", "email.policy",
    "email.utils", "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gc",
    "getopt", "getpass", "gettext", "glob", "graphlib", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib.abc",
    "importlib.metadata", "importlib.util", "inspect", "io", "ipaddress", "itertools", "json", "json.decoder",
    "json.encoder", "linecache", "locale", "logging", "logging.config", "logging.handlers", "mailbox",
    "marshal", "math", "mimetypes", "multiprocessing.connection", "multiprocessing.managers", "numbers",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib",
    "poplib", "pprint", "profile", "pstats", "py_compile", "pyclbr", "pydoc", "queue", "random", "re", "runpy",
    "sched", "selectors", "shelve", "shutil", "signal", "smtplib", "socket", "socketserver", "stat",
    "statistics", "string", "struct", "subprocess", "symtable", "sys", "sysconfig", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "time", "timeit", "tokenize", "trace", "traceback", "tracemalloc",
    "types", "typing", "unicodedata", "unittest", "unittest.case", "unittest.loader", "unittest.mock",
    "unittest.result", "urllib.parse", "urllib.request", "urllib.robotparser", "uuid", "warnings", "wave",
    "weakref", "webbrowser", "wsgiref.handlers", "wsgiref.simple_server", "wsgiref.validate", "xml.dom",
    "xml.dom.NodeFilter", "xml.dom.minidom", "xml.dom.xmlbuilder", "xml.etree.ElementTree", "xml.sax",
    "xml.sax.handler", "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server", "zipfile", "zipimport",
]

HELDOUT_EVERY = 20  # crc32(key) % HELDOUT_EVERY == 0 -> held out
_UNDERLINE = re.compile(r"^[*=~^#-]{3,}$")  # reST heading underlines carry no words


def normalize(text: str) -> str:
    """Unwrap prose paragraphs onto one line; keep indented blocks (code, grammar, nested lists) line by line.

    Hard-wrapped prose would teach the model to emit a newline every ~70 characters; code needs its layout.
    """
    lines = [line.rstrip() for line in text.expandtabs(4).splitlines() if not _UNDERLINE.match(line.strip())]
    paragraphs, block = [], []
    for line in [*lines, ""]:
        if line:
            block.append(line)
            continue
        if block and block[0][0] != " ":
            paragraphs.append(re.sub(r" {2,}", " ", " ".join(part.strip() for part in block)))
        elif block:
            paragraphs.append("\n".join(block))
        block = []
    return "\n\n".join(paragraphs)


def _own_doc(obj) -> str:
    """The object's own docstring (not one inherited from a base class, which would repeat)."""
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else ""
    return inspect.cleandoc(doc) if doc else ""


def _module_doc(name: str) -> str:
    module = importlib.import_module(name)
    parts = [_own_doc(module)]
    for attr in sorted(vars(module)):
        obj = vars(module)[attr]
        if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) not in (name, "_" + name):
            continue  # re-exported from another module, which documents it
        if inspect.isclass(obj):
            parts.append(f"{name}.{attr}\n{_own_doc(obj)}")
            for member in sorted(vars(obj)):
                doc = _own_doc(vars(obj)[member]) if not member.startswith("_") else ""
                if len(doc) >= 60:  # skip one-liners such as "Return self+value."
                    parts.append(f"{name}.{attr}.{member}\n{doc}")
        else:
            parts.append(f"{name}.{attr}\n{_own_doc(obj)}")
    return "\n\n".join(p for p in parts if p.strip() and len(p) >= 60)


def collect() -> list[tuple[str, str]]:
    """(key, normalised text) for every document, in corpus order, computed in this interpreter as it stands."""
    from pydoc_data.topics import topics

    raw = [(f"topic:{key}", topics[key]) for key in sorted(topics)]
    with warnings.catch_warnings():  # some attributes warn when touched (typing.io on 3.11)
        warnings.simplefilter("ignore")
        raw += [(f"module:{name}", _module_doc(name)) for name in MODULES]
    docs, seen = [], set()
    for key, text in raw:
        text = normalize(text)
        if text and text not in seen:
            seen.add(text)
            docs.append((key, text))
    return docs


@functools.lru_cache(maxsize=1)
def documents() -> tuple[tuple[str, str], ...]:
    """collect() run in a fresh `python -I -S`: libraries imported here patch the stdlib (torch replaces
    inspect.getfile), which would change the docstrings found; a bare interpreter sees only the stdlib's own."""
    done = subprocess.run([sys.executable, "-I", "-S", __file__], capture_output=True, check=True)
    return tuple((key, text) for key, text in json.loads(done.stdout))


def is_heldout(key: str) -> bool:
    return zlib.crc32(key.encode()) % HELDOUT_EVERY == 0


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[str, str]:
    """(train_text, heldout_text): the documents of each split joined by blank lines."""
    docs = documents()
    train = [text for key, text in docs if not is_heldout(key)]
    heldout = [text for key, text in docs if is_heldout(key)]
    return "\n\n".join(train), "\n\n".join(heldout)


__all__ = ["MODULES", "collect", "corpus", "documents", "is_heldout", "normalize"]

if __name__ == "__main__":  # what documents() runs
    sys.stdout.write(json.dumps(collect()))
