"""``python -m ptune ...`` (what ``torchrun -m ptune train ...`` runs on every rank): the same CLI."""

import sys

from ptune.cli import main

sys.exit(main())
