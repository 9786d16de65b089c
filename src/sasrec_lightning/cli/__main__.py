"""``python -m sasrec_lightning.cli``: the same as the ``sasrec-lightning`` command."""

from .app import main

main()
