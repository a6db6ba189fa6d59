#!/usr/bin/env python3
"""Hold N idle keep-alive connections on 127.0.0.1:PORT (standard library only).

Usage: idle_conns.py PORT N HOLD_SECONDS PATH [AUTHORIZATION_VALUE]

One connection at a time: connect, send one `GET PATH` (with the Authorization
header when given), read the whole response (head, then Content-Length bytes or a
chunked body), and keep the socket open without sending anything more. Once all N
are held it prints

    ready OPENED OK2XX

(OK2XX = connections whose one response was a 2xx), holds them HOLD_SECONDS, then
prints

    alive ALIVE

(how many the server had not closed meanwhile) and exits, which closes them all.
Bounded: N connections, one request each, 60 s to open them, then HOLD_SECONDS.
Raises its own open-file soft limit as far as the hard limit allows.
"""
import resource
import select
import socket
import sys
import time

OPEN_DEADLINE_S = 60.0


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        want = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        if want < need:
            sys.exit(f"idle_conns.py: open-file hard limit {hard} < {need} needed")


def read_response(s: socket.socket) -> int:
    """Read one HTTP/1.1 response; return its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"content-length" in headers:
        want = int(headers[b"content-length"])
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the body")
            body += chunk
    elif headers.get(b"transfer-encoding") == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the chunked body")
            body += chunk
    return status


def count_alive(socks) -> int:
    """Connections the peer has not closed: no EOF/error pending on them."""
    poller = select.poll()
    by_fd = {}
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
        by_fd[s.fileno()] = s
    closed = 0
    for fd, _ in poller.poll(0):
        s = by_fd[fd]
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if not data:
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return len(socks) - closed


def main() -> None:
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    path = sys.argv[4]
    auth = sys.argv[5] if len(sys.argv) > 5 else ""
    raise_nofile(n + 64)
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if auth:
        req += f"Authorization: {auth}\r\n"
    req = (req + "\r\n").encode()

    socks, ok, errors = [], 0, 0
    deadline = time.monotonic() + OPEN_DEADLINE_S
    while len(socks) < n and time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as e:
            errors += 1
            print(f"connect failed after {len(socks)}: {e}", file=sys.stderr)
            if errors > 10:
                break
            continue
        try:
            s.sendall(req)
            if 200 <= read_response(s) < 300:
                ok += 1
        except (OSError, ValueError, IndexError) as e:
            errors += 1
            print(f"request failed on connection {len(socks) + 1}: {e}", file=sys.stderr)
        socks.append(s)
    print(f"ready {len(socks)} {ok}", flush=True)
    time.sleep(hold)
    print(f"alive {count_alive(socks)}", flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
