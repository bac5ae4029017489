"""Attribute and metric names: the GenAI semantic conventions, plus ometer's own and Langfuse's."""

from __future__ import annotations

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_EMBEDDINGS_DIMENSION_COUNT,
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OPERATION_NAME,
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_OUTPUT_TYPE,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_ID,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_SYSTEM_INSTRUCTIONS,
    GEN_AI_TOKEN_TYPE,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
)
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT

PROVIDER_OLLAMA = "ollama"
MAX_RESPONSE_ID = 255
"""Characters of an exported ``gen_ai.response.id``: an answer's id is the upstream's text
(``chatcmpl-…``, ``msg_…``, ``resp_…``: a few dozen); a longer one is cut, ending in "…"."""
TOKEN_INPUT = gen_ai.GenAiTokenTypeValues.INPUT.value
TOKEN_OUTPUT = gen_ai.GenAiTokenTypeValues.OUTPUT.value
OPERATION_EMBEDDINGS = gen_ai.GenAiOperationNameValues.EMBEDDINGS.value
OPERATION_NAMES = {
    "chat": gen_ai.GenAiOperationNameValues.CHAT.value,
    "generate": gen_ai.GenAiOperationNameValues.TEXT_COMPLETION.value,
    "embed": gen_ai.GenAiOperationNameValues.EMBEDDINGS.value,
    "embeddings": gen_ai.GenAiOperationNameValues.EMBEDDINGS.value,
    # The ledger names an OpenAI-compatible call by its route; telemetry by what it does.
    "openai.chat": gen_ai.GenAiOperationNameValues.CHAT.value,
    "openai.completions": gen_ai.GenAiOperationNameValues.TEXT_COMPLETION.value,
    "openai.embeddings": gen_ai.GenAiOperationNameValues.EMBEDDINGS.value,
    # The OpenAI conventions name a Responses API call ``chat`` too (``openai.api.type``
    # ``responses`` tells it from Chat Completions).
    "openai.responses": gen_ai.GenAiOperationNameValues.CHAT.value,
    "anthropic.messages": gen_ai.GenAiOperationNameValues.CHAT.value,
}


REQUEST_SETTINGS = {
    "max_tokens": gen_ai.GEN_AI_REQUEST_MAX_TOKENS,
    "temperature": gen_ai.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": gen_ai.GEN_AI_REQUEST_TOP_P,
    "top_k": gen_ai.GEN_AI_REQUEST_TOP_K,
    "seed": gen_ai.GEN_AI_REQUEST_SEED,
    "stop_sequences": gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES,
    "frequency_penalty": gen_ai.GEN_AI_REQUEST_FREQUENCY_PENALTY,
    "presence_penalty": gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY,
    "choice_count": gen_ai.GEN_AI_REQUEST_CHOICE_COUNT,
    "output_type": GEN_AI_OUTPUT_TYPE,
}
"""Each of a request's settings (:class:`~ollama_meter.records.Asked`'s fields) → its attribute."""


FINISH_REASONS = {
    # Ollama's native routes, OpenAI's Chat Completions and Completions
    "stop": "stop", "length": "length", "content_filter": "content_filter",
    "tool_calls": "tool_call", "function_call": "tool_call",
    # Anthropic's Messages
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_call",
    "refusal": "content_filter", "model_context_window_exceeded": "length",
    # the Responses API: its status, else why it is incomplete
    "completed": "stop", "max_output_tokens": "length",
}  # fmt: skip
"""Each wire format's word for why a reply ended → the conventions' own (an output message's
``finish_reason``); a word not here has none of theirs, and goes as said."""


def input_only(operation: str) -> bool:
    """Whether a call of ``operation`` (the ledger's name) has input tokens only: an embedding,
    whose span the conventions give no output count and its token usage no output point."""
    return OPERATION_NAMES.get(operation) == OPERATION_EMBEDDINGS


METRIC_TOKEN_USAGE = gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE
METRIC_OPERATION_DURATION = gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION
METRIC_TIME_TO_FIRST_CHUNK = gen_ai_metrics.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK
METRIC_COST = "ometer.cost"
METRIC_REQUESTS = "ometer.requests"
METRIC_QUEUE_DURATION = "ometer.queue.duration"

# Bucket boundaries the GenAI metric conventions ask for.
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)

OMETER_TENANT = "ometer.tenant"
OMETER_DEPARTMENT = "ometer.department"
OMETER_USER = "ometer.user"
OMETER_STATUS = "ometer.status"
OMETER_SPAN_ID = "ometer.span.id"
OMETER_COST = "ometer.cost"
OMETER_COST_PARTS = ("tokens", "compute", "energy", "fee")
OMETER_CURRENCY = "ometer.currency"
OMETER_TOKEN_SOURCE = "ometer.token_source"
OMETER_UNPRICED = "ometer.unpriced"
OMETER_RECORDED_BY = "ometer.recorded_by"
"""``gateway``: the call's record (and its cost, tokens and metrics) is the gateway's span."""

LANGFUSE_OBSERVATION_TYPE = "langfuse.observation.type"
LANGFUSE_MODEL = "langfuse.observation.model.name"
LANGFUSE_USAGE = "langfuse.observation.usage_details"
LANGFUSE_COST = "langfuse.observation.cost_details"
LANGFUSE_TAGS = "langfuse.trace.tags"
LANGFUSE_COMPLETION_START = "langfuse.observation.completion_start_time"
"""When the first token came (an ISO time): Langfuse's time to first token."""
USER_ID = "user.id"

__all__ = [
    "DURATION_BUCKETS",
    "ERROR_TYPE",
    "FINISH_REASONS",
    "GEN_AI_EMBEDDINGS_DIMENSION_COUNT",
    "GEN_AI_INPUT_MESSAGES",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_OUTPUT_MESSAGES",
    "GEN_AI_OUTPUT_TYPE",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_RESPONSE_FINISH_REASONS",
    "GEN_AI_RESPONSE_ID",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_SYSTEM_INSTRUCTIONS",
    "GEN_AI_TOKEN_TYPE",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "LANGFUSE_COMPLETION_START",
    "LANGFUSE_COST",
    "LANGFUSE_MODEL",
    "LANGFUSE_OBSERVATION_TYPE",
    "LANGFUSE_TAGS",
    "LANGFUSE_USAGE",
    "MAX_RESPONSE_ID",
    "METRIC_COST",
    "METRIC_OPERATION_DURATION",
    "METRIC_QUEUE_DURATION",
    "METRIC_REQUESTS",
    "METRIC_TIME_TO_FIRST_CHUNK",
    "METRIC_TOKEN_USAGE",
    "OMETER_COST",
    "OMETER_COST_PARTS",
    "OMETER_CURRENCY",
    "OMETER_DEPARTMENT",
    "OMETER_RECORDED_BY",
    "OMETER_SPAN_ID",
    "OMETER_STATUS",
    "OMETER_TENANT",
    "OMETER_TOKEN_SOURCE",
    "OMETER_UNPRICED",
    "OMETER_USER",
    "OPERATION_EMBEDDINGS",
    "OPERATION_NAMES",
    "PROVIDER_OLLAMA",
    "REQUEST_SETTINGS",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "TOKEN_BUCKETS",
    "TOKEN_INPUT",
    "TOKEN_OUTPUT",
    "USER_ID",
    "input_only",
]
