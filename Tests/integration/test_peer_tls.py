"""Peer links over mutual TLS (`peers.tls`, docs/SCALING.md "Peers"), on
loopback.

Certificates are made with the openssl CLI: one CA signs a certificate per
member (CN = the member's name, usable as server and client), another CA
signs a stranger's. Shows: two members link up over TLS and a pin made on
one reaches the other; a restarted member pulls the table over TLS; a
connection with a certificate from another CA fails its handshake and is
counted; a third daemon whose certificate the CA signed for another name,
claiming to be member b, is refused and counted; bad `peers.tls` config
stops the daemon with a clear error."""
import os
import socket
import ssl
import time

from admin_support import AdminClient
from support import LOOPBACK, fmt_addr, free_port, make_speak_first_handler, wait_until
from test_cli import assert_refused, output, run
from test_peers import KEY, pinned_on, visit
from test_metrics import parse, scrape_raw
from test_remote_admin import openssl


def make_ca(d, name):
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return crt, key


def make_member(d, ca, cn, file=None):
    """A member's certificate: CN is its name; server and client use."""
    file = file or cn
    crt, key, csr, ext = (d / f"{file}.crt", d / f"{file}.key", d / f"{file}.csr", d / f"{file}.ext")
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}", cwd=d)
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-days", "2", "-out", str(crt), "-extfile", str(ext), cwd=d)
    return crt, key


def config_text(listen, peer_listen, name, members, backends, tls, metrics_port=None):
    targets = "\n".join(f"      - {{ address: {b.addr}, name: {b.name} }}" for b in backends)
    ms = "\n".join(f"    - {{ name: {n}, address: {a} }}" for n, a in members)
    tls_text = "".join(f"    {k}: {v}\n" for k, v in tls.items()) if tls is not None else ""
    return f"""\
workers: 2
listeners:
  - address: {listen}
pools:
  - name: web
    targets:
{targets}
    affinity: {{ hash_key: "{KEY}" }}
{f"metrics: {{ listen: '{LOOPBACK}:{metrics_port}' }}" if metrics_port else ""}
peers:
  name: {name}
  listen: {peer_listen}
  sync_timeout: 2s
  members:
{ms}
""" + ("  tls:\n" + tls_text if tls is not None else "")


def start(run_stickyd, tmp_path, name, listen, peer, members, backends, tls, metrics_port=None):
    cfg = tmp_path / f"{name}-{time.monotonic_ns()}.yaml"
    cfg.write_text(config_text(listen, peer, name, members, backends, tls, metrics_port))
    sock = str(tmp_path / f"{name}-{time.monotonic_ns()}.sock")
    d = run_stickyd(listen=[listen], args=["--config", str(cfg), "--admin-socket", sock,
                                           "--state-dir", str(tmp_path / f"state-{name}")])
    wait_until(lambda: os.path.exists(sock), 10, what="admin socket")
    return d, AdminClient(sock)


def tls_of(crt_key, ca):
    return {"cert": str(crt_key[0]), "key": str(crt_key[1]), "ca": str(ca[0])}


def test_members_link_over_mutual_tls_and_strangers_are_refused(run_stickyd, backend, tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, other_ca = make_ca(pki, "peers-ca"), make_ca(pki, "other-ca")
    cert_a, cert_b = make_member(pki, ca, "a"), make_member(pki, ca, "b")
    mallory = make_member(pki, ca, "mallory")
    stranger = make_member(pki, other_ca, "b", file="stranger")

    backends = [backend(make_speak_first_handler(f"b{i}\n".encode()), name=f"b{i}") for i in range(3)]
    la, lb = fmt_addr(LOOPBACK, free_port()), fmt_addr(LOOPBACK, free_port())
    pa, pb = fmt_addr(LOOPBACK, free_port()), fmt_addr(LOOPBACK, free_port())
    mport = free_port()
    a, admin_a = start(run_stickyd, tmp_path, "a", la, pa, [("b", pb)], backends, tls_of(cert_a, ca), mport)

    def refused_metric() -> float:
        return parse(scrape_raw(mport)[2]).get(("stickyd_peer_connections_refused_total", frozenset()), 0.0)
    b, admin_b = start(run_stickyd, tmp_path, "b", lb, pb, [("a", pa)], backends, tls_of(cert_b, ca))

    def links_up() -> bool:
        return all(m["state"] == "up" and m["inbound"] for adm in (admin_a, admin_b)
                   for m in adm.json("show peers")["members"])
    wait_until(links_up, 15, what="both peer links up over TLS")
    peers_a = admin_a.json("show peers")
    assert peers_a["tls"] is True and peers_a["refused"] == 0, peers_a

    # Pins cross the TLS link; how long each takes is reported.
    clients = [f"127.0.5.{i + 1}" for i in range(50)]
    lags = []
    for ip in clients:
        first = visit(a.addr, ip)
        t0 = time.monotonic()
        wait_until(lambda: pinned_on(admin_b, ip) is not None, 5, interval=0.002, what=f"pin of {ip} on b")
        lags.append(time.monotonic() - t0)
        assert visit(b.addr, ip) == first
    lags.sort()
    print(f"\npeer tls: pin_propagation_ms p50={lags[len(lags) // 2] * 1000:.1f} max={lags[-1] * 1000:.1f}")

    # A certificate from another CA: the handshake fails, A counts it.
    host, port = pa.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(stranger[0]), str(stranger[1]))
    refused_handshake = False
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                # TLS 1.3: the refusal may come on the first read.
                s.sendall(b"\0")
                refused_handshake = s.recv(1) == b""
        except (ssl.SSLError, ConnectionResetError):
            refused_handshake = True
    assert refused_handshake
    wait_until(lambda: admin_a.json("show peers")["refused"] >= 1, 5, what="the stranger counted")
    assert "TLS handshake failed" in admin_a.json("show peers")["lastRefusal"]
    a.wait_for_output(r"peer connection refused.*TLS handshake failed", 5)

    # A daemon with a certificate the CA signed for "mallory", claiming to
    # be member b: refused after the handshake, by its certificate's name.
    before = admin_a.json("show peers")["refused"]
    lm, pm = fmt_addr(LOOPBACK, free_port()), fmt_addr(LOOPBACK, free_port())
    m, admin_m = start(run_stickyd, tmp_path, "b", lm, pm, [("a", pa)], backends, tls_of(mallory, ca))
    wait_until(lambda: admin_a.json("show peers")["refused"] > before, 10, what="the impostor counted")
    a.wait_for_output(r"peer connection refused.*certificate CN 'mallory' is not the member's name", 5)
    m.stop(10)
    refused = admin_a.json("show peers")["refused"]
    wait_until(lambda: refused_metric() == refused, 5, what="the metric agrees with show peers")
    assert refused >= 2
    # The real b is still linked.
    wait_until(links_up, 10, what="links still up")

    # B restarts: it pulls A's table over TLS before ready; nobody moves.
    before_pins = {ip: visit(a.addr, ip) for ip in clients}
    b.stop(10)
    b2, admin_b2 = start(run_stickyd, tmp_path, "b", lb, pb, [("a", pa)], backends, tls_of(cert_b, ca))
    b2.wait_for_output(r"peer table pulled", 5)
    moved = sum(visit(b2.addr, ip) != t for ip, t in before_pins.items())
    assert moved == 0
    assert admin_b2.json("show peers")["sync"].startswith(f"{len(clients)} pins from a") or \
        int(admin_b2.json("show peers")["sync"].split()[0]) >= len(clients)


def test_bad_peer_tls_config_is_refused_clearly(stickyd_path, tmp_path, backend):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "peers-ca")
    cert_a, cert_b = make_member(pki, ca, "a"), make_member(pki, ca, "b")
    backends = [backend(name="t0")]
    listen, peer, member = (fmt_addr(LOOPBACK, free_port()) for _ in range(3))
    missing = tmp_path / "missing.crt"
    cases = [
        ({"cert": str(missing), "key": str(cert_a[1]), "ca": str(ca[0])}, f"peers.tls.cert {missing}: cannot open"),
        ({"cert": str(cert_a[0]), "key": str(cert_a[1])}, "peers.tls.ca"),
        ({"cert": str(cert_a[0]), "key": str(cert_b[1]), "ca": str(ca[0])}, "is not the key of peers.tls.cert"),
        ({"cert": str(cert_a[0]), "key": str(cert_a[1]), "ca": str(cert_a[1])}, "peers.tls.ca"),
        ({"cert": str(cert_a[0]), "key": str(cert_a[1]), "ca": str(ca[0]), "verify": "no"}, "verify"),
    ]
    for n, (tls, words) in enumerate(cases):
        cfg = tmp_path / f"bad-{n}.yaml"
        cfg.write_text(config_text(listen, peer, "a", [("b", member)], backends, tls))
        p = run([stickyd_path, "--config", cfg, "--admin-socket", tmp_path / f"bad-{n}.sock",
                 "--state-dir", tmp_path / "state-bad"])
        assert_refused(p)
        assert words in output(p), (tls, output(p))
