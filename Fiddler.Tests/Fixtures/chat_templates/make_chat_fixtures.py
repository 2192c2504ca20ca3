#!/usr/bin/env python3
"""Renders the chat templates in this folder with the real jinja2, the way transformers does, and writes
chat_template_cases.json (expected text or expected error for every template x conversation x add_generation_prompt).

transformers is not needed: its rendering environment is reproduced here from
transformers/utils/chat_template_utils.py (_compile_jinja_template / render_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
globals raise_exception and strftime_now, the tojson filter overridden (json.dumps, ensure_ascii=False),
and render(messages=..., tools=None, documents=None, add_generation_prompt=..., **special_tokens).

    python3 Fiddler.Tests/Fixtures/chat_templates/make_chat_fixtures.py
"""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))

# template file stem -> special tokens as in that model's tokenizer_config.json
TEMPLATES = {
    "mixtral-8x7b-instruct-v0.1": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mixtral-8x7b-instruct-v0.1-original": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral-7b-instruct-v0.2": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral-7b-instruct-v0.3": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "llama-2-chat": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "chatml-openhermes": {"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"},
    "chatml-qwen1.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "zephyr-7b-beta": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gemma-7b-it": {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
    "llama-3-8b-instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "jinja-features": {"bos_token": "<s>", "eos_token": "</s>"},
}

S, U, A = "system", "user", "assistant"
CONVERSATIONS = {
    "single_user": [(U, "Hello")],
    "multi_turn": [(U, "Hello"), (A, "Hi there"), (U, "How are you?")],
    "ends_with_assistant": [(U, "Hello"), (A, "Hi there")],
    "system_single": [(S, "You are terse."), (U, "Hello")],
    "system_multi": [(S, "You are terse."), (U, "Hello"), (A, "  Hi there  "), (U, "Bye")],
    "empty_content": [(U, ""), (A, ""), (U, "")],
    "unicode": [(U, "Héllo 👋 世界\nsecond line\ttab"), (A, "  réponse ✓ \n"), (U, "Ω≈ç√∫ 🇫🇷")],
    "template_syntax_in_content": [(U, "{{ bos_token }} {% if x %} [INST] <|im_start|> <<SYS>> \\n"), (A, "[/INST] </s>"), (U, "{# c #}")],
    "whitespace_content": [(U, "  padded  \n\n"), (A, "\tanswer\t"), (U, " \n ")],
    "only_system": [(S, "You are terse.")],
    "reject_double_user": [(U, "a"), (U, "b")],
    "reject_starts_with_assistant": [(A, "a"), (U, "b")],
    "reject_unknown_role": [(U, "a"), (A, "b"), ("tool", "c")],
    "reject_system_late": [(U, "a"), (A, "b"), (S, "c"), (U, "d")],
}


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    env = make_env()
    cases = []
    for stem, tokens in TEMPLATES.items():
        with open(os.path.join(HERE, stem + ".jinja"), encoding="utf-8", newline="") as f:
            template = env.from_string(f.read())
        for conv_name, conv in CONVERSATIONS.items():
            messages = [{"role": r, "content": c} for r, c in conv]
            for gen in (True, False):
                case = {"template": stem, "conversation": conv_name, "add_generation_prompt": gen}
                try:
                    case["expected"] = template.render(messages=messages, tools=None, documents=None,
                                                       add_generation_prompt=gen, **tokens)
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = {"type": type(e).__name__, "message": str(e)}
                except (TypeError, ValueError, IndexError, KeyError) as e:
                    case["error"] = {"type": type(e).__name__, "message": str(e)}
                cases.append(case)
    out = {
        "generator": f"make_chat_fixtures.py with jinja2 {jinja2.__version__}, python {sys.version.split()[0]}",
        "templates": TEMPLATES,
        "conversations": {k: [list(m) for m in v] for k, v in CONVERSATIONS.items()},
        "cases": cases,
    }
    with open(os.path.join(HERE, "chat_template_cases.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    ok = sum("expected" in c for c in cases)
    print(f"{len(cases)} cases ({ok} rendered, {len(cases) - ok} rejected)")


if __name__ == "__main__":
    main()
