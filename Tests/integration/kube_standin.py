"""A Kubernetes API stand-in for the discovery tests: EndpointSlices and one
Service, over HTTPS, with the real list/watch protocol.

Why not PyPI's kmock: its KubernetesEmulator (0.8, checked with
`pip download --no-deps kmock`) answers a list with the literal
resourceVersion '...', replays every object as ADDED on each watch whatever
resourceVersion is asked, sends no BOOKMARK and never a 410. Those are the
parts stickyd's watch must get right, so this small server models them.

What it models:
- GET .../namespaces/NS/endpointslices?labelSelector=kubernetes.io/service-name=S
  with limit/continue pages; the list's metadata.resourceVersion;
- ...&watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T:
  a chunked stream of ADDED/MODIFIED/DELETED events after RV, a BOOKMARK
  every `bookmark_s`, the end after T (capped by `watch_cap_s`); an RV older
  than the kept history gets an ERROR event with code 410 (Expired), or an
  HTTP 410 with `gone_as_http`;
- GET .../namespaces/NS/services/S (404 when unset);
- a bearer token or a client certificate from the test CA, else 401;
- stop() (connections cut, port closed) and start() again on the same port
  with the same objects and versions: the API going away and coming back.

What it does not model: RBAC and authorization beyond that one check;
etcd's cluster-wide revisions (versions here count this store's changes
only); HTTP/2; field selectors, resourceVersionMatch, sendInitialEvents and
the initial-events-end bookmark; continue tokens expiring (410 on a page);
watch cache windows other than "the last `history_max` changes"; server-side
admission (it serves whatever the test writes); any other resource kind.
"""

from __future__ import annotations

import copy
import json
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

LABEL = "kubernetes.io/service-name"


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    d = directory
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    run("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "2", "-subj", "/CN=stand-in CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        run("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"), "-subj", f"/CN=stand-in {name}")
        (d / f"{name}.ext").write_text(ext)
        run("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-out", str(d / f"{name}.crt"), "-extfile", str(d / f"{name}.ext"))
    return {k: d / f"{k}" for k in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def kubeconfig(path: Path, server: str, ca: Path, *, token: str | None = None,
               cert: Path | None = None, key: Path | None = None, namespace: str = "default") -> Path:
    user = {}
    if token:
        user["token"] = token
    if cert:
        user["client-certificate"] = str(cert)
        user["client-key"] = str(key)
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "standin", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "tester", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "standin", "user": "tester", "namespace": namespace}}],
    }
    path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    return path


def endpoint(addr: str, *, ready: bool = True, serving: bool | None = None, terminating: bool = False,
             pod: str | None = None) -> dict:
    return {"addresses": [addr],
            "conditions": {"ready": ready, "serving": ready if serving is None else serving, "terminating": terminating},
            **({"targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}} if pod else {})}


class KubeStandin:
    def __init__(self, pki: dict[str, Path], *, token: str = "s3cret", namespace: str = "default",
                 bookmark_s: float = 1.0, watch_cap_s: float = 30.0, history_max: int = 1000) -> None:
        self.pki = pki
        self.token = token
        self.namespace = namespace
        self.bookmark_s = bookmark_s
        self.watch_cap_s = watch_cap_s
        self.history_max = history_max
        self.gone_as_http = False
        self.cond = threading.Condition()
        self.rv = 100
        self.slices: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.history: list[tuple[int, str, dict]] = []  # (rv, type, object)
        self.oldest = self.rv  # a watch from an rv below this gets 410
        self.requests: list[str] = []
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.streams: set[socket.socket] = set()
        self.port = 0
        self.generation = 0
        self.running = False

    # ---- objects ---------------------------------------------------------

    def _bump(self, kind: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, copy.deepcopy(obj)))
        if len(self.history) > self.history_max:
            drop = self.history.pop(0)
            self.oldest = drop[0]
        self.cond.notify_all()

    def set_slice(self, name: str, service: str, endpoints: list[dict], port: int, port_name: str = "grpc") -> None:
        with self.cond:
            kind = "MODIFIED" if name in self.slices else "ADDED"
            obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": name, "namespace": self.namespace, "labels": {LABEL: service}},
                   "addressType": "IPv4", "endpoints": endpoints,
                   "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}
            self.slices[name] = obj
            self._bump(kind, obj)

    def delete_slice(self, name: str) -> None:
        with self.cond:
            obj = self.slices.pop(name)
            self._bump("DELETED", obj)

    def set_service(self, name: str, timeout_s: int | None) -> None:
        with self.cond:
            spec = {"sessionAffinity": "ClientIP" if timeout_s else "None"}
            if timeout_s:
                spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout_s}}
            self.services[name] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}

    def compact(self) -> None:
        """Forget the history: any watch from an older version gets 410."""
        with self.cond:
            self.history.clear()
            self.oldest = self.rv

    # ---- serving ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                standin.handle(self)

        srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        srv.allow_reuse_address = True
        srv.daemon_threads = True
        srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.server_bind()
        srv.server_activate()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki["server.crt"], self.pki["server.key"])
        ctx.load_verify_locations(self.pki["ca.crt"])
        ctx.verify_mode = ssl.CERT_OPTIONAL
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self.port = srv.server_address[1]
        self.server = srv
        with self.cond:
            self.generation += 1
            self.running = True
        self.thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                                       name="kube-standin")
        self.thread.start()

    def stop(self) -> None:
        """The API goes away: no new connection, open watches cut."""
        if self.server is None:
            return
        with self.cond:
            # First: a request already accepted, or a watch that read the
            # generation just now, sees this and ends without a clean end.
            self.running = False
            self.generation += 1
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        with self.cond:
            streams = list(self.streams)
            self.cond.notify_all()
        for s in streams:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.thread:
            self.thread.join(5)
        self.server = None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        u = urlparse(h.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        with self.cond:
            self.requests.append(h.path)
            running = self.running
        if not running:
            h.close_connection = True
            return
        auth = h.headers.get("Authorization", "")
        has_cert = bool(h.connection.getpeercert()) if isinstance(h.connection, ssl.SSLSocket) else False
        if auth != f"Bearer {self.token}" and not has_cert:
            return self.send_json(h, 401, status(401, "Unauthorized"))
        parts = u.path.strip("/").split("/")
        ns = self.namespace
        if parts[:5] == ["apis", "discovery.k8s.io", "v1", "namespaces", ns] and parts[5:] == ["endpointslices"]:
            selector = q.get("labelSelector", "")
            if not selector.startswith(f"{LABEL}="):
                return self.send_json(h, 400, status(400, "want a service-name label selector"))
            service = selector.split("=", 1)[1]
            if q.get("watch") in ("1", "true"):
                return self.watch(h, service, q)
            return self.list(h, service, q)
        if parts[:4] == ["api", "v1", "namespaces", ns] and len(parts) == 6 and parts[4] == "services":
            with self.cond:
                svc = copy.deepcopy(self.services.get(parts[5]))
            if svc is None:
                return self.send_json(h, 404, status(404, f'services "{parts[5]}" not found'))
            return self.send_json(h, 200, svc)
        return self.send_json(h, 404, status(404, "the server could not find the requested resource"))

    def list(self, h, service: str, q: dict) -> None:
        with self.cond:
            items = [copy.deepcopy(s) for n, s in sorted(self.slices.items())
                     if s["metadata"]["labels"].get(LABEL) == service]
            rv = str(self.rv)
        limit = int(q.get("limit", "0") or 0)
        start = int(q.get("continue", "0") or 0)
        page = items[start:start + limit] if limit else items
        more = bool(limit) and start + limit < len(items)
        meta = {"resourceVersion": rv, **({"continue": str(start + limit)} if more else {})}
        self.send_json(h, 200, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                                "metadata": meta, "items": page})

    def watch(self, h, service: str, q: dict) -> None:
        since = int(q.get("resourceVersion", "0") or 0)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        until = time.monotonic() + min(float(q.get("timeoutSeconds", "60")), self.watch_cap_s)
        with self.cond:
            too_old = since < self.oldest
            generation = self.generation
        if too_old and self.gone_as_http:
            return self.send_json(h, 410, status(410, f"too old resource version: {since} ({self.oldest})"))
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sock = h.connection
        with self.cond:
            self.streams.add(sock)
        try:
            if too_old:
                self.chunk(h, {"type": "ERROR", "object": status(410, f"too old resource version: {since} ({self.oldest})", "Expired")})
                return self.end(h)
            sent = since
            next_bookmark = time.monotonic() + self.bookmark_s
            while True:
                with self.cond:
                    events = [(rv, t, o) for rv, t, o in self.history
                              if rv > sent and o["metadata"]["labels"].get(LABEL) == service]
                    if not events:
                        self.cond.wait(min(0.2, max(0.0, next_bookmark - time.monotonic())))
                    if self.generation != generation or not self.running:
                        h.close_connection = True
                        return  # stopped: the connection is cut, no clean end
                    current = self.rv
                for rv, t, o in events:
                    self.chunk(h, {"type": t, "object": o})
                    sent = rv
                now = time.monotonic()
                if now >= until:
                    return self.end(h)
                if bookmarks and now >= next_bookmark:
                    self.chunk(h, {"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                                                  "metadata": {"resourceVersion": str(current)}}})
                    sent = max(sent, current)
                    next_bookmark = now + self.bookmark_s
        except OSError:
            return
        finally:
            with self.cond:
                self.streams.discard(sock)

    @staticmethod
    def chunk(h, obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()

    @staticmethod
    def end(h) -> None:
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
        h.close_connection = True

    @staticmethod
    def send_json(h, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        h.close_connection = True


def status(code: int, message: str, reason: str = "") -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason or {401: "Unauthorized", 404: "NotFound", 410: "Expired"}.get(code, "BadRequest"), "code": code}
