"""The ``ometer`` process (the console script, and ``python -m ollama_meter``).

:func:`ollama_meter.cli.main` runs a command and can be called in-process; this wraps it
for a process of its own, which is about to end and can skip what ending costs. Python's
cyclic collector would otherwise run dozens of times while some 600 modules load, and
once more at exit over every object they made: together a quarter of a short command's
time (``bench/startup.py``). So the collector waits for more new objects before it runs,
and at exit, after the shared parts (ledgers, telemetry, threads) are closed in order,
what is left is frozen instead of walked: the process's memory goes back to the system
whole.
"""

import gc


def main() -> None:
    gc.set_threshold(10_000)  # the default, 700, collects ~200 times in `ometer log`
    from ollama_meter._runtime import reset_runtime
    from ollama_meter.cli import main as run

    try:
        run()
    finally:
        reset_runtime()
        gc.freeze()


if __name__ == "__main__":
    main()
