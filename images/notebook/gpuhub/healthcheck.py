"""Docker HEALTHCHECK: does the Jupyter server in this container answer HTTP?"""

import os
import sys
import urllib.error
import urllib.parse
import urllib.request

url = os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:8888/"
parts = urllib.parse.urlsplit(url)
target = f"http://127.0.0.1:{parts.port or 8888}{parts.path.rstrip('/')}/api"
try:
    urllib.request.urlopen(target, timeout=4)
except urllib.error.HTTPError:
    pass  # any HTTP answer means the server is up
except OSError as e:
    print(f"no answer from {target}: {e}")
    sys.exit(1)
