"""`python -m lorakit ...` (and `torchrun -m lorakit ...`) run the CLI."""

import sys

from lorakit.cli import main

sys.exit(main())
