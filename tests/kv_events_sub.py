"""A KV-event subscriber built on libzmq (pyzmq) and an independent msgpack decoder.

Usage: kv_events_sub.py ENDPOINT. Connects a SUB socket to ENDPOINT (all topics), prints
"ready" once the subscription has had time to reach the publisher, then one JSON line per
message: {"frames": n, "topic": str, "seq": int, "batch": the decoded payload}. Runs until
killed. Used by tests/fleet.rs.
"""
import json
import sys
import time

import msgpack
import zmq

ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
time.sleep(0.5)  # PUB/SUB "slow joiner": let the subscription arrive first
print("ready", flush=True)
while True:
    frames = sub.recv_multipart()
    out = {"frames": len(frames), "topic": frames[0].decode(), "seq": None, "batch": None}
    if len(frames) == 3:
        out["seq"] = int.from_bytes(frames[1], "big")
        out["batch"] = msgpack.unpackb(frames[2], raw=False, strict_map_key=False)
    print(json.dumps(out), flush=True)
