"""`meshcore demo` (the README's first command): a small mesh on loopback — a control plane, an
outbound and an inbound proxy with mTLS between them, backends in two zones and a second cluster,
and traffic. Driven as a user would: through the URLs and the file it prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import httpx

from conftest import MESHCORE, OutputLines, wait_until


def requests_over(text: str, tls: str) -> float:
    return sum(float(v) for v in re.findall(rf'^request_total{{[^}}]*tls="{tls}"[^}}]*}} (\S+)$', text, re.M))


def edit(document: str, drop: str) -> None:
    """Deletes the endpoint line of backend `drop` (what the guide tells the user to do)."""
    with open(document) as f:
        lines = [line for line in f if not line.rstrip().endswith(f"# {drop}")]
    with open(document + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(document + ".tmp", document)


def test_demo_is_a_mesh_that_follows_its_control_plane_across_zones_and_clusters():
    ephemeral = ["--listen", "--admin", "--inbound-admin", "--control"]
    args = [part for flag in ephemeral for part in (flag, "127.0.0.1:0")]
    proc = subprocess.Popen(
        [*MESHCORE, "demo", *args, "--duration", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = OutputLines(proc.stdout)
        out.wait_for("Press Ctrl-C")
        text = "".join(out.lines)
        url = re.search(r"curl (http://127\.0\.0\.1:\d+)/ ", text).group(1)
        admin = re.search(r"curl (http://127\.0\.0\.1:\d+)/endpoints", text).group(1)
        inbound_admin = re.search(r"curl (http://127\.0\.0\.1:\d+)/metrics +# the inbound", text).group(1)
        document = re.search(r"serving (\S+\.toml)", text).group(1)

        with httpx.Client() as c:
            # mTLS between the proxies: the app behind the inbound proxy sees the caller's identity.
            headers = c.get(url + "/headers", headers={"x-canary": "1"}).json()
            assert headers["meshcore-client-id"] == "spiffe://demo.mesh/ns/demo/sa/client"
            assert c.get(url + "/", headers={"x-canary": "1"}).headers["x-backend"] == "web-v2-a1"

            # The outbound proxy learnt web's endpoints from the control plane, in three cost tiers.
            web = next(s for s in c.get(admin + "/endpoints").json()["services"] if s["name"] == "web")
            assert sorted(e["tier"] for e in web["endpoints"]) == [0, 1, 2]

            def web_answers_from(backend: str) -> bool:
                r = c.get(url + "/")
                assert r.status_code == 200, r.text
                return r.headers["x-backend"] == backend

            wait_until(lambda: web_answers_from("web-a1"), what="an answer from zone-a")
            edit(document, "web-a1")  # zone-a's web endpoint gone: zone-b takes over
            wait_until(lambda: web_answers_from("web-b1"), what="an answer from zone-b")
            edit(document, "web-b1")  # east has none left: cluster west
            wait_until(lambda: web_answers_from("web-west1"), what="an answer from cluster west")
            for _ in range(20):  # and only there (web-v2 takes its 10 %)
                r = c.get(url + "/")
                assert r.status_code == 200, r.text
                assert r.headers["x-backend"] in ("web-west1", "web-v2-a1"), r.headers

            # The demo's own traffic flows too, and the inbound side served it all over mTLS.
            inbound = c.get(inbound_admin + "/metrics").text
            assert requests_over(inbound, "false") == 0
            assert requests_over(inbound, "true") > 20
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert "demo stopped" in out.text()
    finally:
        proc.kill()
