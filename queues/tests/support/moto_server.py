"""moto_server (PyPI moto[server]) with its SQS backend made safe for
concurrent requests and without its per-message rescans of a whole queue.

The tests run moto's own server and SQS implementation; this launcher only
mends four things in moto 5.x that real SQS does not share (see
docs/queues.md, "moto, mended"):

1. Requests are not atomic. moto's DeleteMessage rebuilds a queue's list of
   messages outside any lock, so a message sent meanwhile is lost; two
   concurrent ReceiveMessage calls can both take one message (both see it
   visible before either marks it received). Here every SQS backend call
   holds one lock; a long poll releases it while it waits, as a real
   server's waiting consumer holds nothing.
2. `Queue.attributes` counts every message of the queue (a `datetime` per
   message) and SendMessage and ReceiveMessage read it once per message for
   one plain setting. Here it is a mapping that computes a key when the key
   is read.
3. moto's clock builds a `datetime` per reading; here it reads
   `time.time()` (the same value: seconds since the epoch).
4. DeleteMessage scans the queue, building a list of receipt handles per
   message. Here receipt handles are indexed when a message is received.
5. The counts of GetQueueAttributes call two properties and a clock per
   message; here each is one pass reading the clock once.

It also logs no line per request (the tests drain moto's stderr; the
start-up line with the port is still logged).

A FIFO long poll whose visible messages all belong to groups in flight no
longer spins a core: the wait is on the lock's condition, woken by a send
or a visibility change, and at most 100 ms long.

Usage: the arguments of `moto_server` (`-H 127.0.0.1 -p 0`).
"""

import functools
import json
import sys
import threading
import time
from collections.abc import Mapping

from moto.core.utils import camelcase_to_underscores
from werkzeug.serving import WSGIRequestHandler
from moto.sqs import models
from moto.sqs.exceptions import ReceiptHandleIsInvalid

# 1. One lock for the SQS backend; a long poll waits on its condition.
LOCK = threading.Condition(threading.RLock())
# Longest wait before a long poll looks at its queue again (messages become
# visible again when their visibility timeout passes, which nobody signals).
POLL_STEP = 0.1


def _atomic(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        with LOCK:
            return method(*args, **kwargs)

    return call


for _name, _value in list(vars(models.SQSBackend).items()):
    if callable(_value) and not _name.startswith("__"):
        setattr(models.SQSBackend, _name, _atomic(_value))


def _wait_for_messages(self, timeout):
    # Called by receive_message with LOCK held (once, not recursively): the
    # wait releases it so other requests run meanwhile.
    LOCK.wait(min(timeout, POLL_STEP))


models.Queue.wait_for_messages = _wait_for_messages

_add_message = models.Queue.add_message


def _add_message_and_wake(self, message):
    _add_message(self, message)
    LOCK.notify_all()


models.Queue.add_message = _add_message_and_wake

_change_visibility = models.SQSBackend.change_message_visibility


def _change_visibility_and_wake(self, *args, **kwargs):
    _change_visibility(self, *args, **kwargs)
    LOCK.notify_all()


models.SQSBackend.change_message_visibility = _atomic(_change_visibility_and_wake)


# 2. Queue attributes computed per key.
class _Attributes(Mapping):
    def __init__(self, queue):
        self._queue = queue
        names = list(queue.BASE_ATTRIBUTES)
        if queue.fifo_queue:
            names += queue.FIFO_ATTRIBUTES
        if queue.kms_master_key_id:
            names += queue.KMS_ATTRIBUTES
        if queue.policy:
            names.append("Policy")
        if queue.redrive_policy:
            names.append("RedrivePolicy")
        self._names = list(dict.fromkeys(names))

    def __getitem__(self, key):
        if key not in self._names:
            raise KeyError(key)
        queue = self._queue
        # As moto's own property: the two policies are overwritten only when
        # set (RedrivePolicy as JSON text).
        if key == "Policy" and queue.policy:
            value = queue.policy
        elif key == "RedrivePolicy" and queue.redrive_policy:
            value = json.dumps(queue.redrive_policy)
        else:
            value = getattr(queue, camelcase_to_underscores(key))
        if isinstance(value, bool):
            value = str(value).lower()
        return value

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __contains__(self, key):
        return key in self._names


models.Queue.attributes = property(_Attributes)


# 3. The clock without datetimes.
def _unix_time(dt=None):
    if dt is not None:
        return _moto_unix_time(dt)
    return time.time()


def _unix_time_millis(dt=None):
    return _unix_time(dt) * 1000.0


_moto_unix_time = models.unix_time
models.unix_time = _unix_time
models.unix_time_millis = _unix_time_millis


# 4. Receipt handles indexed: handle -> message.
HANDLES = {}
_mark_received = models.Message.mark_received


def _mark_received_indexed(self, visibility_timeout=None):
    _mark_received(self, visibility_timeout)
    HANDLES[self.receipt_handle] = self


models.Message.mark_received = _mark_received_indexed


def _delete_message(self, receipt_handle):
    if receipt_handle in self.deleted_messages:
        # Already deleted: moto (and SQS) accept it again.
        return
    message = HANDLES.get(receipt_handle)
    try:
        at = self._messages.index(message) if message is not None else None
    except ValueError:
        at = None
    if at is None:
        raise ReceiptHandleIsInvalid()
    del self._messages[at]
    self.pending_messages.discard(message)
    handles = message.all_receipt_handles
    self.deleted_messages.update(handles)
    for handle in handles:
        HANDLES.pop(handle, None)


models.Queue.delete_message = _delete_message


# 5. Counts in one pass with one clock reading (the same tests as
# Message.visible and Message.delayed).
def _ready(self):
    now = _unix_time_millis()
    return sum(1 for m in self._messages if now > m.visible_at and now >= m.delayed_until)


def _delayed(self):
    now = _unix_time_millis()
    return sum(1 for m in self._messages if now < m.delayed_until)


def _not_visible(self):
    now = _unix_time_millis()
    return sum(1 for m in self._messages if not now > m.visible_at)


models.Queue.approximate_number_of_messages = property(_ready)
models.Queue.approximate_number_of_messages_delayed = property(_delayed)
models.Queue.approximate_number_of_messages_not_visible = property(_not_visible)

# No access log line per request.
WSGIRequestHandler.log_request = lambda *args, **kwargs: None

if __name__ == "__main__":
    from moto.server import main

    main(sys.argv[1:])
