"""``python -m brainad.cli``: the ``brainad`` command."""

import sys

from brainad.cli.main import main

sys.exit(main())
