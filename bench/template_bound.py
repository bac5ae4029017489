"""How long bounding a model's TEMPLATE takes (``/api/show``'s, once per template and process).

Times :func:`~ollama_meter.budgets._template.bound_template`'s reading (its cache bypassed)
of a large template in the shape of the ones Ollama ships (a tool-use preamble, each tool's
signature and properties, the messages with roles, calls and thinking: about 8 KB), and of
what a lying server may answer within its 4 MB; prints the median and the slowest of
``--runs`` runs of each, in milliseconds.

    python bench/template_bound.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ollama_meter.budgets._template import _bound

MB = 2**20
PREAMBLE = "These words stand for a long tool-use preamble of a few kilobytes.\n" * 60
REALISTIC = (
    "{{- if or .Tools .System }}<|system|>\n{{- if .Tools }}"
    + PREAMBLE
    + """{{ if .System }}{{ .System }}{{ end }}
{{- range $t := .Tools }}
def {{ .Function.Name }}({{ range $name, $p := .Function.Parameters.Properties }}{{ $name }}: {{ $p.Type }}, {{ end }}):
    '''{{ .Function.Description }}
{{- range $name, $p := .Function.Parameters.Properties }}
    {{ $name }} ({{ $p.Type }}): {{ $p.Description }}{{ end }}'''
{{- end }}{{ else if .System }}{{ .System }}{{ end }}<|end|>{{ end }}
{{- $system := "" }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}{{ $system = printf "%s\\n\\n%s" $system .Content }}{{ continue }}{{ end }}
{{- if eq .Role "user" }}<|user|>{{ if $system }}{{ $system }}{{ $system = "" }}{{ end }}{{ .Content }}
{{- else if eq .Role "assistant" }}<|assistant|>
{{- if and $last .Thinking }}<think>{{ .Thinking }}</think>{{ end }}
{{- if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}{{ end }}
{{- else }}{{ .Content }}{{ end }}
{{- else if eq .Role "tool" }}<|tool|>{{ .Content }}{{ end }}
{{- if and $last (ne .Role "assistant") }}<|assistant|>{{ if eq $i 0 }}{{ currentDate }}{{ end }}{{ end }}
{{- end }}"""
)
CASES = {
    "realistic (8 KB)": REALISTIC,
    "4,900 actions": "{{ .System }}" * 4_900,
    "2,400 ranges": "{{ range .Messages }}x{{ end }}" * 2_400,
    "4 MB of text": "x" * (4 * MB),
    "4 MB string in an action": '{{ "' + "a" * (4 * MB) + '" }}',
    "4 MB of actions (refused)": "{{ .System }}" * (4 * MB // 13),
    "100,000 nested ifs (refused)": "{{ if .System }}" * 100_000 + "{{ end }}" * 100_000,
    "4 MB of 1,000-word actions (refused)": ("{{ and" + " .System" * 990 + " }}") * 500,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    for name, template in CASES.items():
        times = []
        for _ in range(runs):
            began = time.perf_counter()
            bound = _bound(template)
            times.append((time.perf_counter() - began) * 1000)
        said = "bounded" if not isinstance(bound, str) else f"refused ({bound})"
        print(
            f"{name:38} median {statistics.median(times):8.1f} ms  "
            f"slowest {max(times):8.1f} ms  {said}"
        )


if __name__ == "__main__":
    main()
