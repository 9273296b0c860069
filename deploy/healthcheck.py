"""Exit 0 when the ledger service in this container answers PATH with 200, else 1.

The image carries no curl or wget, so Docker's HEALTHCHECK and the compose file's health
checks run this with the image's own Python:

    python /opt/ledger/healthcheck.py /health/live     # the process is up (the image's check)
    python /opt/ledger/healthcheck.py /health/ready    # and PostgreSQL and NATS answer

It asks 127.0.0.1 on LEDGER_HTTP_PORT (default 8000), the port `ledger serve` listens on.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0
"""Below the compose file's health check timeout, so a hung service reads as unhealthy."""


def main(argv: list[str]) -> int:
    """Probe the path in `argv[1]` (default `/health/live`); 0 when it answered 200."""
    path = argv[1] if len(argv) > 1 else "/health/live"
    port = os.environ.get("LEDGER_HTTP_PORT", "8000")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as error:  # a 503 arrives here as an HTTPError
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
