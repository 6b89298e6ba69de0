#!/bin/sh
# Container command: first-start set-up of the home volume, then the given command
# (the image's CMD: jupyterhub-singleuser). The example notebooks are copied, not
# linked, so students can edit their copies; the originals stay read-only in
# /opt/gpuhub/examples.
if [ ! -e "$HOME/examples" ] && [ -w "$HOME" ]; then
    mkdir -p "$HOME/examples" && cp -R /opt/gpuhub/examples/. "$HOME/examples/" && chmod -R u+w "$HOME/examples"
fi
exec "$@"
