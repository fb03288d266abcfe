"""``python -m trio_tls_dtls`` is ``trio-tlsd``."""

import sys

from .cli.main import main

sys.exit(main())
