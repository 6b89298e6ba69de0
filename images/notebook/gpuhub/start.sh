#!/bin/sh
# Container command: first-start set-up of the home volume, then the given command
# (the image's CMD: jupyterhub-singleuser). The example notebooks are copied, not
# linked, so students can edit their copies; the originals stay read-only in
# /opt/gpuhub/examples.
if [ ! -e "$HOME/examples" ] && [ -w "$HOME" ]; then
    mkdir -p "$HOME/examples" && cp -R /opt/gpuhub/examples/. "$HOME/examples/" && chmod -R u+w "$HOME/examples"
fi
# Course material (GPUHUB_COURSES, from the hub): never blocks the server for long, never fails it.
if [ -n "$GPUHUB_COURSES" ]; then
    timeout 300 python3 -m course_sync || echo "gpuhub-course: sync did not finish (exit $?)"
fi
exec "$@"
