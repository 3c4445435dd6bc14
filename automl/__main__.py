"""``python -m automl``: the ``automl`` command (what torchrun starts on every rank)."""

from automl.cli import main

if __name__ == "__main__":
    main()
