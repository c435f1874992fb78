#!/bin/sh
# /opt/prefect/entrypoint.sh, as in Prefect's image: Prefect's Helm chart runs
# `/usr/bin/tini -g -- /opt/prefect/entrypoint.sh prefect worker start ...`. Runs its arguments (exec, so the
# worker gets tini's signals itself); without arguments, the worker with the image's settings.
set -eu
if [ -n "${EXTRA_PIP_PACKAGES-}" ]; then
  # Prefect's image pip-installs these at start-up; a read-only root file system cannot take them.
  echo "entrypoint.sh: EXTRA_PIP_PACKAGES is ignored: build the packages into the image (PIP_REQUIREMENTS in the Containerfile)" >&2
fi
if [ "$#" -eq 0 ]; then
  exec /usr/local/bin/prefect-worker start
fi
exec "$@"
