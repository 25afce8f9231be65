"""Chat prompts: a folder's chat template rendered with jinja2 exactly as transformers'
`apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` renders it (transformers 5.x,
utils/chat_template_utils.py): the same sandboxed environment and options, the same globals and filters, and the
tokenizer's named special tokens (bos_token, eos_token, ...) as variables.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from ...errors import UserError
from .base import Tokenizer


@lru_cache
def compile_template(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for transformers' token masks; rendering
        without a mask (all we do) outputs the body unchanged."""

        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class TemplateDict:  # dict() without attribute access to the type (as transformers restricts it)
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):  # namespace() that refuses underscore attributes
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; transformers replaces it with plain json.dumps
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace)
    return env.from_string(template)


def render_chat(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages` ([{"role": "user", "content": ...}, ...]); encode it with bos=False (the
    template writes its own BOS, and transformers tokenizes it with add_special_tokens=False)."""
    import jinja2

    template = tokenizer.chat_template
    if template is None:
        raise UserError(f"{tokenizer.folder} has no chat template (tokenizer_config.json 'chat_template' or "
                        "chat_template.jinja); drop --chat and write the prompt in the model's own format")
    if not messages:
        raise UserError("a chat needs at least one message")
    try:
        return compile_template(template).render(messages=messages, tools=None, documents=None,
                                                 add_generation_prompt=add_generation_prompt,
                                                 **tokenizer.named_tokens())
    except jinja2.exceptions.TemplateError as exc:
        raise UserError(f"the chat template of {tokenizer.folder} refused the messages: {exc}") from None
