#!/usr/bin/env bash
# Wait until the hub answers, then print where it is and how to sign in.
set -euo pipefail
envfile=$1
get() { grep -E "^$1=" "$envfile" | tail -1 | cut -d= -f2-; }
port=$(get GPUHUB_PUBLIC_PORT); port=${port:-8000}
url="http://localhost:$port"
for _ in $(seq 1 120); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('$url/hub/health', timeout=2)" 2>/dev/null; then
    host=$(hostname -f 2>/dev/null || hostname)
    auth=$(get GPUHUB_AUTH); auth=${auth:-shared-password}
    if [ "$auth" = shared-password ]; then
      cat <<MSG

gpuhub is up:  $url/   (from other machines: http://$host:$port/)

  Students:  any user name (or one of GPUHUB_ALLOWED_USERS), password: $(get GPUHUB_SHARED_PASSWORD)
  Admins:    $(get GPUHUB_ADMIN_USERS), password: $(get GPUHUB_ADMIN_PASSWORD)

Passwords live in $envfile. Stop with 'make down' (homes and hub data are kept).
MSG
    else
      cat <<MSG

gpuhub is up:  $(get GPUHUB_PUBLIC_URL)/   (this host: $url/)

  Sign in with $auth: members of $(get GPUHUB_ALLOWED_GROUPS) get in; $(get GPUHUB_ADMIN_GROUPS) are admins.

Stop with 'make down' (homes and hub data are kept).
MSG
    fi
    exit 0
  fi
  sleep 1
done
echo "gpuhub: the hub did not answer at $url within 120 s; 'make logs' shows why" >&2
exit 1
