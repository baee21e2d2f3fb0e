"""The embedded farm's server-less broker: kombu's filesystem transport, made safe for several processes.

kombu writes a message file in place, so a consumer polling the folder can move a half-written
file away and fail to decode it, and it names files by milliseconds, so two messages sent in the
same millisecond may be consumed out of order. Here a message is written under a name no consumer
matches and renamed into place once complete (rename is atomic on POSIX filesystems), and names
order messages by nanoseconds and a sequence number.
"""

from __future__ import annotations

import os
import uuid
import itertools
from time import time_ns

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import filesystem
from kombu.utils.json import dumps


_sequence = itertools.count()


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):  # type: ignore[no-untyped-def]
        # Consumers take files in name order: nanoseconds and a per-process sequence keep one
        # sender's messages in the order it sent them (kombu's milliseconds do not).
        name = f"{time_ns():020d}{next(_sequence) % 1000:03d}_{uuid.uuid4()}.{queue}.msg"
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
