"""`python -m meshcore`: the `meshcore` command, run by this interpreter (how an upgrade starts
the new process when no other command is named)."""

import sys

from .cli import main

sys.exit(main())
