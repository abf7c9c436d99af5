#!/bin/sh
# The compose profiles the configuration built into the image asks for, comma
# separated: `notify` when it names a notification channel (mail or webhook),
# so the notifier runs only where it has something to do. Read with the
# services' own configuration loader, in a container with no network.
# Usage: compose/profiles.sh   (image pyfilter:$PYFILTER_VERSION, default latest)
exec docker run --rm --network none --entrypoint python "pyfilter:${PYFILTER_VERSION:-latest}" -c '
from pyfilter.common.config import load
notify = load(rules=False).config.notify
print("notify" if notify.any_channel else "")'
