"""``python -m pkt_core.jobs worker | list | unload | cancel JOB``."""

import sys

from pkt_core.jobs.worker import main

sys.exit(main())
