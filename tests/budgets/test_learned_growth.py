"""What a process learns of each model's own prompt is kept per model, not per spelling of a
name (case, the default registry: a caller may spell one model a new way each call), and for
a bounded number of models (a server may answer for any name)."""

from __future__ import annotations

import itertools
import logging

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.budgets import CallBound, HiddenPrompts, ShownPrompts
from ollama_meter.budgets._estimate import MODELS_LEARNED
from ollama_meter.budgets._shown import MODELS_KEPT
from ollama_meter.records import MAX_TOKENS

BOUND = CallBound(input_tokens=100, output_tokens=10)
NAME = "registry.ollama.ai/library/llama3.1:8b"


def spellings() -> list[str]:
    """Names Ollama runs llama3.1:8b for: its letters in either case, with or without the
    default registry and namespace."""
    letters = [i for i, c in enumerate(NAME) if c.isalpha()]
    names = []
    for bits in range(2_000):
        chars = list(NAME)
        for k, i in enumerate(letters):
            if bits >> k & 1:
                chars[i] = chars[i].upper()
        names.append("".join(chars))
    return names


def learn(hidden: HiddenPrompts, model: str, counted: int = 150) -> int:
    hidden.observe(model, counted, BOUND)
    return hidden.observe(model, counted, BOUND)


def test_each_spelling_of_a_model_is_the_model_not_an_entry_of_its_own() -> None:
    """Ollama reads names without case, and fills in its registry: a caller naming one model
    a new way each call made it learn the model's prompt again for each, and keep each."""
    hidden = HiddenPrompts()
    for name in spellings():
        learn(hidden, name)
    assert len(hidden._learned) == 1
    assert len(hidden._shown) == 1
    # What one spelling taught holds for every other: the model adds 50 tokens.
    assert hidden.added("LLAMA3.1:8B", BOUND).input_tokens == 150


def test_a_server_saying_so_of_every_name_fills_the_table_to_its_bound() -> None:
    hidden = HiddenPrompts()
    for n in range(MODELS_LEARNED + 1_000):
        assert learn(hidden, f"made-up-{n}") == 50
    assert len(hidden._learned) <= MODELS_LEARNED
    assert hidden.added(f"made-up-{MODELS_LEARNED + 999}", BOUND).hidden == 50  # the newest


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(range(MODELS_LEARNED // 100)))
def test_a_model_in_use_stays_learned_however_many_others_are_learned(order: list[int]) -> None:
    """Each admission reads its model's entry, which keeps it: a flood of other names takes
    the ones no call asked for since, never the one in use."""
    hidden = HiddenPrompts()
    learn(hidden, "llama3.1:8b")
    names = (f"made-up-{n}-{k}" for n in itertools.count() for k in order)
    for name in itertools.islice(names, 3 * MODELS_LEARNED):
        learn(hidden, name)
        assert hidden.added("llama3.1:8b", BOUND).hidden == 50


def test_a_template_nothing_bounds_is_said_once_a_model_and_remembered_for_few(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Said once per server and model: each spelling of the model was another, and each kept."""
    shown = ShownPrompts(["http://gpu-1:11434"])
    garbage = {"template": "{{ .Messages"}
    with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
        for name in spellings():
            assert shown._described("http://gpu-1:11434", name, garbage).hidden == MAX_TOKENS
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    for n in range(MODELS_KEPT + 1_000):  # a server saying so of every name it is asked of
        shown._described("http://gpu-1:11434", f"made-up-{n}", garbage)
    assert len(shown._unbounded) <= MODELS_KEPT
