"""``python -m llmguard`` entry point (same program as the ``llmguard`` console script)."""

from llmguard.cli import main

if __name__ == "__main__":
    main()
