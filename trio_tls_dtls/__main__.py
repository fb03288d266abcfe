"""``python -m trio_tls_dtls`` is ``trio-tlsd``."""

import sys

from .cli import main

sys.exit(main())
