from ollama_meter.cli import main

main()
