"""``python -m llmguard`` and the ``llmguard`` console script.

The interrupt handlers go in before anything heavy is imported, so Ctrl-C at any moment (during
``import torch`` included) ends with one line and exit 130 (:mod:`llmguard.interrupts`).
"""

from llmguard import interrupts


def main() -> None:
    interrupts.install()
    try:
        from llmguard.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # raised outside a verb (importing the CLI, parsing)
        interrupts.interrupted_exit()


if __name__ == "__main__":
    main()
