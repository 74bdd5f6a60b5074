"""`python -m demo`: the live demo (see demo/live.py)."""

import sys

from demo.live import main

sys.exit(main())
