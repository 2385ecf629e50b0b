#!/usr/bin/env python3
"""The Acme CX-2 firmware (examples/README.md) as a separate process.

cxl-accel-backend consults it over JSON lines when started with
`--firmware-socket PATH`: the backend listens at PATH, this process connects, the
backend asks one question per line and this process answers each with a line that
carries the question's id. It behaves as examples/vendor-firmware does in process,
except for the engine operation (engine operations run inside the backend):

- commits take 2 ms; a decoder larger than the commit limit is refused;
- vendor opcodes 0xC000 Set Commit Limit and 0xC001 Raise Event;
- media is ready 100 ms after a conventional reset, 200 ms after a CXL Reset;
- Transfer FW takes only images with the ACME magic and a good CRC32; Activate FW
  only at the next cold reset.

When the backend is not there yet, or goes away, it connects again (every 0.2 s).
Python 3 standard library only.

  usage: firmware.py SOCKET [--misbehave silent|garbage|die-on-commit] [--once]

--misbehave turns it into a hostile process, for testing the backend's defaults:
`silent` reads every question and answers none, `garbage` answers each with a
line that is not JSON, `die-on-commit` exits when it is asked about a commit.
"""

import argparse
import json
import socket
import sys
import time
import zlib

OP_SET_COMMIT_LIMIT = 0xC000
OP_RAISE_EVENT = 0xC001
COMMIT_DELAY_MS = 2
MEDIA_AFTER_RESET_MS = {"conventional": 100, "flr": 0, "cxl": 200}
EVENT_UUID = "41434d45-4556-4e54-8000-000000000001"
IMAGE_MAGIC = b"ACME"
MAX_IMAGE = 1 << 20
GRANULE = 256 << 20
LOGS = ["informational", "warning", "failure", "fatal"]


def log(msg):
    print(f"firmware.py: {msg}", file=sys.stderr, flush=True)


def image_ok(image):
    """Revision (16 bytes), ACME, body, then the CRC32 of all that, little-endian."""
    if len(image) < 16 + len(IMAGE_MAGIC) + 4 or len(image) > MAX_IMAGE:
        return False
    head, crc = image[:-4], image[-4:]
    return head[16:20] == IMAGE_MAGIC and zlib.crc32(head).to_bytes(4, "little") == crc


class Acme:
    """The firmware's state and its answers, one method per hook."""

    def __init__(self):
        self.capacity = 0
        self.limit = None  # None: the capacity
        self.image = None  # a Transfer FW in parts, so far

    def commit_limit(self):
        return self.capacity if self.limit is None else self.limit

    def hello(self, msg):
        self.capacity = msg.get("memory_size", 0)

    def commit(self, q):
        if q["size"] > self.commit_limit():
            log(f"decoder {q['decoder']}: {q['size']:#x} bytes is over the limit {self.commit_limit():#x}")
            return {"decision": "reject"}
        return {"decision": "delay", "ms": COMMIT_DELAY_MS}

    def power_on_decoders(self, q):
        self.capacity = q["capacity"]
        return {"decoders": []}

    def reset(self, msg):
        self.image = None

    def media_ready(self, q):
        return {"media": "ready", "after_ms": MEDIA_AFTER_RESET_MS[q["kind"]]}

    def cxl_reset(self, q):
        return {"result": "complete", "ms": 10}

    def vendor_command(self, q):
        data = bytes.fromhex(q["input"])
        if q["opcode"] == OP_SET_COMMIT_LIMIT:
            if len(data) != 8:
                return {"rc": "invalid_payload_length"}
            limit = int.from_bytes(data, "little")
            if limit == 0 or limit % GRANULE or limit > self.capacity:
                return {"rc": "invalid_input"}
            previous = self.commit_limit()
            self.limit = limit
            return {"rc": "success", "output": previous.to_bytes(8, "little").hex()}
        if q["opcode"] == OP_RAISE_EVENT:
            if len(data) != 2:
                return {"rc": "invalid_payload_length"}
            if data[0] >= len(LOGS):
                return {"rc": "invalid_input"}
            event = {"log": LOGS[data[0]], "uuid": EVENT_UUID, "data": data[1:2].hex()}
            return {"rc": "success", "events": [event]}
        return {"rc": "unsupported"}

    def transfer_fw(self, q):
        data = bytes.fromhex(q["data"])
        action = q["action"]
        if action == "full":
            return {"accept": True} if image_ok(data) else {"reject": "verification"}
        if action == "initiate":
            if data[16:20] != IMAGE_MAGIC or len(data) > MAX_IMAGE:
                return {"reject": "verification"}
            self.image = data
            return {"accept": True}
        if action in ("continue", "end"):
            if self.image is None:
                return {"reject": "out_of_order"}
            image, self.image = self.image + data, None
            if len(image) > MAX_IMAGE:
                return {"reject": "verification"}
            if action == "continue":
                self.image = image
                return {"accept": True}
            return {"accept": True} if image_ok(image) else {"reject": "verification"}
        if action == "abort":
            self.image = None
            return {"accept": True}
        return {"reject": "invalid_input"}

    def activate_fw(self, q):
        # The CX-2 loads firmware from flash only at a cold reset.
        if q["online"]:
            return {"reject": "activation_needs_cold_reset"}
        return {"accept": True}


def serve(conn, fw, misbehave):
    """Answer questions until the backend closes the connection."""
    buf = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            msg = json.loads(line)
            if "notify" in msg:
                if msg["notify"] == "hello":
                    log(f"connected: protocol {msg['protocol']}, deadline {msg['deadline_ms']} ms")
                    fw.hello(msg)
                elif msg["notify"] == "reset":
                    fw.reset(msg)
                continue
            hook = msg["hook"]
            if misbehave == "silent":
                continue
            if misbehave == "garbage":
                conn.sendall(b"this is not an answer\n")
                continue
            if misbehave == "die-on-commit" and hook == "commit":
                log("asked about a commit: dying without an answer")
                sys.exit(3)
            handler = getattr(fw, hook, None)
            if handler is None:
                log(f"no answer for hook {hook!r}: the backend takes its default")
                continue
            answer = handler(msg)
            answer["id"] = msg["id"]
            conn.sendall(json.dumps(answer).encode() + b"\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("socket", help="the backend's --firmware-socket PATH")
    p.add_argument("--misbehave", choices=["silent", "garbage", "die-on-commit"])
    p.add_argument("--once", action="store_true", help="exit when the backend disconnects")
    args = p.parse_args()
    fw = Acme()
    while True:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(args.socket)
        except OSError:
            conn.close()
            time.sleep(0.2)
            continue
        with conn:
            try:
                serve(conn, fw, args.misbehave)
            except (ConnectionError, OSError) as e:
                log(f"connection lost: {e}")
        log("the backend went away")
        if args.once:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
