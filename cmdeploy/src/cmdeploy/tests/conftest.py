"""The online suite runs only through ``cmdeploy test`` (it needs a deployed relay)."""

import os

collect_ignore = [] if os.environ.get("CHATMAIL_ONLINE") else ["online"]
