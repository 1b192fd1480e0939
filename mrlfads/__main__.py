"""``python -m mrlfads`` is the ``mrlfads`` command."""
import sys

from mrlfads.training.cli import main

sys.exit(main())
