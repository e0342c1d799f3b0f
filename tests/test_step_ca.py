"""docs/config.md, "Behind a TLS-re-signing proxy": a step trusts a CA it is given, both
ways the recipe names (the CA's certificate committed to the repository, or the host's file
passed as a secret file), by a real TLS handshake in Debian's python3 that verifies the
server's certificate through ``SSL_CERT_FILE``; without the recipe the same handshake
fails verification, so the recipe is what makes it pass. Both ways stay cache hits."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from support.cli import KataProcess

pytestmark = pytest.mark.integration

PIPELINE = """\
pipeline: proxy-ca
x-tls: &tls
  image: kata.local/debian-pytest:bookworm
  inputs: ["tls/**", "ci/**"]
  network: none
  commands: ["python3 tls/check.py"]
steps:
  - name: repo-ca
    <<: *tls
    env: {SSL_CERT_FILE: /workspace/ci/proxy-ca.pem}
  - name: host-ca
    <<: *tls
    secrets: [PROXY_CA]
    cache: true
    env: {SSL_CERT_FILE: /run/kata/secrets/PROXY_CA}
  - name: no-ca
    <<: *tls
    allow_failure: true
"""

# an https server on the step's loopback with a certificate the test CA signed, and a
# client that verifies it with the default context (which reads SSL_CERT_FILE)
CHECK = """\
import http.server, ssl, threading, urllib.request
srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("tls/server.pem", "tls/server.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = "https://127.0.0.1:%d/tls/hello.txt" % srv.server_address[1]
try:
    with urllib.request.urlopen(url, timeout=30) as resp:
        print("verified:", resp.read().decode().strip())
except urllib.error.URLError as err:
    print("refused:", err.reason)
    raise SystemExit(1)
"""


def _certificates(out: Path) -> tuple[Path, Path, Path]:
    """A CA (as a TLS-re-signing proxy has) and a server certificate for 127.0.0.1 it
    signed: (ca.pem, server.pem, server.key)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=out)

    (out / "ca.ext").write_text("basicConstraints=critical,CA:TRUE\n"
                                "keyUsage=critical,keyCertSign,cRLSign\n"
                                "subjectKeyIdentifier=hash\n")
    (out / "server.ext").write_text("basicConstraints=critical,CA:FALSE\n"
                                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                    "extendedKeyUsage=serverAuth\n"
                                    "subjectAltName=IP:127.0.0.1\n"
                                    "authorityKeyIdentifier=keyid\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.csr", "-subj", "/CN=Test Re-signing Proxy CA")
    openssl("x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-days", "3", "-out",
            "ca.pem", "-extfile", "ca.ext")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "3", "-out", "server.pem", "-extfile", "server.ext")
    return out / "ca.pem", out / "server.pem", out / "server.key"


def test_a_step_trusts_the_proxy_ca_from_the_repository_or_the_host(
        tmp_path, containerd_daemon, clean_runtime, debian_pytest_digest):
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, server, key = _certificates(certs)
    repo = tmp_path / "repo"
    (repo / "tls").mkdir(parents=True)
    (repo / "ci").mkdir()
    (repo / ".kata-ci.yaml").write_text(PIPELINE)
    (repo / "tls" / "check.py").write_text(CHECK)
    (repo / "tls" / "hello.txt").write_text("hello\n")
    (repo / "tls" / "server.pem").write_bytes(server.read_bytes())
    (repo / "tls" / "server.key").write_bytes(key.read_bytes())
    (repo / "ci" / "proxy-ca.pem").write_bytes(ca.read_bytes())
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       drop=("PROXY_CA",))

    first = kata("run", "--secret-file", f"PROXY_CA={ca}")
    out = first.stdout
    assert first.returncode == 0, out + first.stderr
    assert "repo-ca | verified: hello" in out and "host-ca | verified: hello" in out, out
    assert re.search(r"^no-ca \| refused: .*CERTIFICATE_VERIFY_FAILED", out, re.M), out
    assert re.search(r"^\[WARN\] no-ca \(exit 1, allowed to fail", out, re.M), out

    again = kata("run", "--secret-file", f"PROXY_CA={ca}")
    assert again.returncode == 0, again.stdout + again.stderr
    cache = dict(re.findall(r"^\[CACHE\] (.+?): (HIT|MISS)", again.stdout, re.M))
    assert cache == {"repo-ca": "HIT", "host-ca": "HIT", "no-ca": "MISS"}, again.stdout
