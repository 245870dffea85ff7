"""Checking a language instruction when it arrives, before any chunk is conditioned on it.

An instruction that cannot be used (empty, or longer than the model's prompt budget) is
rejected when it arrives, not once per chunk: the node reports it on /diagnostics and
holds until a usable instruction arrives. It does not fall back to the previous
instruction: an operator who sends a new one wants the old task to stop.
"""

from __future__ import annotations

# Longer texts are rejected before tokenizing: no π0.5-class prompt budget holds them.
MAX_INSTRUCTION_CHARS = 2000


class InstructionError(ValueError):
    """The instruction cannot be used; the message says why."""


def shorten(text: str, limit: int = 80) -> str:
    """`text` for a log line: at most `limit` characters, with the full length when cut."""
    text = text.replace("\n", " ")
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def check_instruction(text: str, predictor=None) -> str:
    """The stripped instruction, or InstructionError naming the problem.

    predictor: when it has `prompt_tokens(task) -> (tokens, budget)` (model.inference.Predictor),
    the instruction must fit the model's prompt budget together with the state text.
    """
    task = text.strip()
    if not task:
        raise InstructionError(f"instruction {text!r} is empty; expected a task in words, "
                               "e.g. 'move to the red block'")
    if len(task) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(f"instruction '{shorten(task, 40)}' has {len(task)} characters; "
                               f"expected at most {MAX_INSTRUCTION_CHARS}")
    prompt_tokens = getattr(predictor, "prompt_tokens", None)
    if prompt_tokens is not None:
        tokens, budget = prompt_tokens(task)
        if tokens > budget:
            raise InstructionError(f"instruction '{shorten(task, 40)}' needs {tokens} prompt tokens "
                                   f"with the state; the model's budget (max_token_len) is {budget}")
    return task
