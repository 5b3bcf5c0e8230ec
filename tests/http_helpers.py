"""A tiny HTTP client for the tests of the service's endpoints."""

import json
import urllib.error
import urllib.request


def http_call(port: int, path: str, method: str = "GET", token: str | None = None,
              body: dict | None = None) -> tuple[int, str]:
    """(status, body text); status 0 when nothing answers on the port."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""
