"""The ``ometer`` process (the console script, and ``python -m ollama_meter``).

:func:`ollama_meter.cli.main` runs a command and can be called in-process; this wraps it
for a process of its own, which is about to end and can skip what ending costs. Python's
cyclic collector would otherwise run dozens of times while some 600 modules load, walking
objects that live as long as the process, and once more at exit over every object they
made: together a quarter of a short command's time (``bench/startup.py``). So a command
starts with the collector waiting for more new objects than a short command makes in all
(``_runtime.STARTING``), and at exit, after the shared parts (ledgers, telemetry, threads)
are closed in order, what is left is frozen instead of walked: the process's memory goes
back to the system whole. A process that stays up (the gateway) calls
``_runtime.serving()`` once it has started.
"""

import gc


def main() -> None:
    from ollama_meter._stops import hold

    hold()  # before the modules load: a stop signal meanwhile is the command's to act on
    from ollama_meter._runtime import STARTING, reset_runtime

    gc.set_threshold(STARTING)
    from ollama_meter.cli import main as run

    try:
        run()
    finally:
        reset_runtime()
        gc.freeze()


if __name__ == "__main__":
    main()
