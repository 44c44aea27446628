"""`python -m havs.vrrp --fd N`: the VRRP child process the daemon spawns."""

import sys

from havs.vrrp.child import main

sys.exit(main())
