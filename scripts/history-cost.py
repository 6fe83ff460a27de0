#!/usr/bin/env python3
"""What signin and `GET /api/orders` cost with and without a history of unrelated documents.

Starts the given auth and orders binaries on fresh databases (FerretDB at MONGO_URL, NATS at
NATS_URL), seeds HISTORY unrelated users, orders and ticket replicas directly into their databases
(as years of sold tickets would leave them), then measures throughput with a few
clients (answers per second, median latency, failed requests). Needs pymongo. Usage:

    scripts/history-cost.py AUTH_BIN ORDERS_BIN [HISTORY ...]   (default: 0 10000)
"""

import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request

from bson import ObjectId
from pymongo import MongoClient

JWT_KEY = "history-cost-jwt-key-not-a-secret-anywhere"
CLIENTS = 4


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, database, extra=None):
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "METRICS_PORT": "0",
            "JWT_KEY": JWT_KEY,
            "MONGO_DB": database,
            "NATS_STREAM": "hc_" + database,
            "NATS_SUBJECT_PREFIX": "hc" + database + ".",
            "AUTH_RATE_LIMIT_PER_MINUTE": "1000000",
            "RUST_LOG": "warn",
        }
    )
    env.update(extra or {})
    began = time.monotonic()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    # Long: a first start copies the history into the new indexes once.
    for _ in range(6000):
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, base, time.monotonic() - began
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{binary} did not become ready")


def request(method, url, body=None, cookie=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if cookie:
        req.add_header("cookie", cookie)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.headers.get("set-cookie"), json.loads(r.read() or b"null")


def throughput(count, call):
    """Answers per second of `count` calls made by CLIENTS threads, their median latency in ms, and
    how many failed."""
    left = [count]
    lock = threading.Lock()
    latencies, errors = [], [0]

    def worker():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            began = time.monotonic()
            try:
                call()
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.monotonic() - began)

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    p50 = round(1000 * latencies[len(latencies) // 2], 1) if latencies else None
    return round(len(latencies) / (time.monotonic() - began), 1), p50, errors[0]


def measure(auth_bin, orders_bin, history, mongo):
    suffix = f"{history}_{random.randrange(1 << 30):x}"
    auth_db, orders_db = f"hc_auth_{suffix}", f"hc_orders_{suffix}"
    # A real argon2 hash, taken from a signup, for the seeded users.
    proc, base, _ = start(auth_bin, auth_db)
    try:
        _, cookie, me = request(
            "POST", base + "/api/users/signup", {"email": "me@measure.test", "password": "password"}
        )
    finally:
        proc.terminate()
        proc.wait()
    cookie = cookie.split(";")[0]
    users = mongo[auth_db]["users"]
    hash_ = users.find_one({"email": "me@measure.test"})["password_hash"]
    if history:
        users.insert_many(
            [{"_id": ObjectId(), "email": f"u{i}@seed.test", "password_hash": hash_} for i in range(history)]
        )
    # The user's own orders, and `history` orders of others, each with its ticket replica.
    orders, tickets = mongo[orders_db]["orders"], mongo[orders_db]["tickets"]

    def order(user_id, status):
        ticket = ObjectId()
        tickets_batch.append({"_id": ticket, "title": "Seeded", "price": 1000, "version": 0})
        oid = ObjectId()
        return {
            "_id": oid,
            "userId": user_id,
            "status": status,
            "expiresAt": __import__("datetime").datetime.now(__import__("datetime").timezone.utc),
            "version": 1,
            "ticketId": str(ticket),
            "reservation": str(ticket) if status != "cancelled" else f"released:{oid}",
        }

    tickets_batch = []
    batch = [order(me["id"], "complete") for _ in range(5)]
    batch += [order(str(ObjectId()), "complete") for _ in range(history)]
    orders.insert_many(batch)
    tickets.insert_many(tickets_batch)

    result = {"history": history}
    proc, base, ready = start(auth_bin, auth_db)
    result["auth ready s"] = round(ready, 2)
    try:
        result["signin/s, p50 ms, errors"] = throughput(
            40,
            lambda: request(
                "POST",
                base + "/api/users/signin",
                {"email": "me@measure.test", "password": "password"},
            ),
        )
    finally:
        proc.terminate()
        proc.wait()
    proc, base, ready = start(orders_bin, orders_db, {"EXPIRY_SWEEP_SECONDS": "3600"})
    result["orders ready s"] = round(ready, 2)
    try:
        status, _, body = request("GET", base + "/api/orders", cookie=cookie)
        assert status == 200 and len(body) == 5, body
        result["GET /api/orders/s, p50 ms, errors"] = throughput(
            100, lambda: request("GET", base + "/api/orders", cookie=cookie)
        )
    finally:
        proc.terminate()
        proc.wait()
    mongo.drop_database(auth_db)
    mongo.drop_database(orders_db)
    return result


def main():
    auth_bin, orders_bin = sys.argv[1], sys.argv[2]
    histories = [int(h) for h in sys.argv[3:]] or [0, 10000]
    mongo = MongoClient(os.environ["MONGO_URL"])
    for history in histories:
        print(json.dumps(measure(auth_bin, orders_bin, history, mongo)), flush=True)


if __name__ == "__main__":
    main()
