"""``python -m pkt_core.cli`` (e.g. under torchrun) is ``pkt``."""

import sys

from pkt_core.cli.main import main

sys.exit(main())
