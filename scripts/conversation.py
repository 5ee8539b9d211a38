#!/usr/bin/env python3
"""Long-lived TCP conversations for the restart checks (scripts/e2e.sh).

  conversation.py serve PORT_CLIENT_FIRST PORT_SERVER_FIRST
      On the first port the client speaks first: each line is echoed back.
      On the second the server speaks first: it sends a numbered line every
      0.1 s and expects each echoed back.
  conversation.py talk HOST PORT client-first|server-first N STOPFILE
      Opens N connections and keeps them talking (one message every 0.1 s
      each, checked) until STOPFILE exists, then prints one line:
      "ok conns=N msgs=M max_stall_ms=S" or "lost conns=K ... first_error=...".
      A stall is the longest time a connection waited for its next expected
      message. Exits 0 only if no connection was lost.
"""
import os
import socket
import sys
import threading
import time

INTERVAL = 0.1
# A connection silent this long is lost (TCP would also have given up on it
# or reset it long before in a real failure; a restart takes a few seconds).
DEAD_AFTER = 30.0


def readline(f):
    line = f.readline()
    if not line:
        raise ConnectionError("closed by peer")
    return line


def serve_client_first(conn):
    with conn, conn.makefile("rwb", buffering=0) as f:
        while True:
            f.write(readline(f))


def serve_server_first(conn):
    with conn, conn.makefile("rwb", buffering=0) as f:
        n = 0
        while True:
            msg = b"%d\n" % n
            f.write(msg)
            if readline(f) != msg:
                raise ConnectionError("bad echo")
            n += 1
            time.sleep(INTERVAL)


def listen(port, handler):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=guard, args=(handler, conn), daemon=True).start()


def guard(handler, conn):
    try:
        handler(conn)
    except (OSError, ConnectionError):
        pass


class Talker:
    def __init__(self, host, port, mode, stop):
        self.host, self.port, self.mode, self.stop = host, port, mode, stop
        self.msgs = 0
        self.max_stall = 0.0
        self.error = None

    def run(self):
        try:
            s = socket.create_connection((self.host, self.port), timeout=5)
            s.settimeout(DEAD_AFTER)
            with s, s.makefile("rwb", buffering=0) as f:
                n = 0
                while not os.path.exists(self.stop):
                    t0 = time.monotonic()
                    if self.mode == "client-first":
                        msg = b"%d\n" % n
                        f.write(msg)
                        got = readline(f)
                        if got != msg:
                            raise ConnectionError("bad echo %r" % got)
                    else:
                        got = readline(f)
                        if got != b"%d\n" % n:
                            raise ConnectionError("out of order %r" % got)
                        f.write(got)
                    waited = time.monotonic() - t0
                    self.max_stall = max(self.max_stall, waited)
                    self.msgs += 1
                    n += 1
                    if self.mode == "client-first":
                        time.sleep(INTERVAL)
        except (OSError, ConnectionError) as e:
            self.error = "%s: %s" % (type(e).__name__, e)


def talk(host, port, mode, n, stop):
    talkers = [Talker(host, int(port), mode, stop) for _ in range(int(n))]
    threads = [threading.Thread(target=t.run, daemon=True) for t in talkers]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    lost = [t for t in talkers if t.error]
    stall = max(t.max_stall for t in talkers) * 1000
    msgs = sum(t.msgs for t in talkers)
    if lost:
        print("lost conns=%d/%d msgs=%d max_stall_ms=%.0f first_error=%s"
              % (len(lost), len(talkers), msgs, stall, lost[0].error), flush=True)
        return 1
    print("ok conns=%d msgs=%d max_stall_ms=%.0f" % (len(talkers), msgs, stall), flush=True)
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "serve":
        threading.Thread(target=listen, args=(int(argv[2]), serve_client_first),
                         daemon=True).start()
        listen(int(argv[3]), serve_server_first)
        return 0
    if len(argv) == 7 and argv[1] == "talk" and argv[4] in ("client-first", "server-first"):
        return talk(*argv[2:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
