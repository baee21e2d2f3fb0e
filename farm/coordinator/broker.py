"""The embedded farm's server-less broker: kombu's filesystem transport, made safe for several processes.

kombu writes a message file in place, so a consumer polling the folder can move a half-written
file away and fail to decode it. Here a message is written under a name no consumer matches and
renamed into place once complete (rename is atomic on POSIX filesystems).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):  # type: ignore[no-untyped-def]
        name = f"{int(round(monotonic() * 1000)):015d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps(payload))
        os.replace(tmp, final)


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = "farmfs"
    driver_name = "farmfs"


TRANSPORT_ALIASES.setdefault("farmfs", "farm.coordinator.broker:Transport")
