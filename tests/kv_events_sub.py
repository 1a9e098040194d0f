"""A KV-event subscriber built on libzmq (pyzmq) and an independent msgpack decoder.

Usage: kv_events_sub.py ENDPOINT. Connects a SUB socket to ENDPOINT (all topics), prints
"ready" once the subscription has had time to reach the publisher, then one JSON line per
message: {"frames": n, "topic": str, "seq": int, "batch": the decoded payload}. Runs until
killed.

Usage: kv_events_sub.py --replay ENDPOINT START. Asks the replay (ROUTER) socket at ENDPOINT
for every message from seq START with a DEALER, as vLLM's subscribers do, prints one JSON line
per reply in the same shape, and exits after the end marker.

Used by tests/kv_events.rs.
"""
import json
import sys
import time

import msgpack
import zmq

ctx = zmq.Context()


def show(frames):
    out = {"frames": len(frames), "topic": frames[0].decode(), "seq": None, "batch": None}
    if len(frames) == 3:
        out["seq"] = int.from_bytes(frames[1], "big", signed=True)
        out["batch"] = msgpack.unpackb(frames[2], raw=False, strict_map_key=False) if frames[2] else None
    print(json.dumps(out), flush=True)


if sys.argv[1] == "--replay":
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(sys.argv[2])
    dealer.send_multipart([b"", int(sys.argv[3]).to_bytes(8, "big")])
    dealer.setsockopt(zmq.RCVTIMEO, 10000)
    while True:
        frames = dealer.recv_multipart()
        assert frames[0] == b"", frames
        show(frames[1:])
        if int.from_bytes(frames[2], "big", signed=True) == -1:
            sys.exit(0)

sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
time.sleep(0.5)  # PUB/SUB "slow joiner": let the subscription arrive first
print("ready", flush=True)
while True:
    show(sub.recv_multipart())
