"""``python -m mlfsic.harness.cli``: the ``mlfsic`` command."""

import sys

from mlfsic.harness.cli import main

sys.exit(main())
