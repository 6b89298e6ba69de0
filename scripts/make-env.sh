#!/usr/bin/env bash
# Create .env from .env.example on first run, with generated passwords. Never
# overwrites an existing .env.
set -euo pipefail
example=$1 target=$2
[ -e "$target" ] && exit 0
gen() { python3 -c "import secrets; print(secrets.token_urlsafe($1))"; }
umask 077
sed -e "s|^GPUHUB_SHARED_PASSWORD=\$|GPUHUB_SHARED_PASSWORD=$(gen 12)|" \
    -e "s|^GPUHUB_ADMIN_PASSWORD=\$|GPUHUB_ADMIN_PASSWORD=$(gen 32)|" \
    -e "s|^GPUHUB_POSTGRES_PASSWORD=\$|GPUHUB_POSTGRES_PASSWORD=$(gen 24)|" \
    "$example" >"$target"
echo "gpuhub: created $target with generated passwords (mode 600)"
