"""`meshcore demo --mesh` (#19): hosts in network namespaces with sidecars, an app per zone and a
client running load. Driven as a user would: through the commands it prints. Without root it
says so, and what to run instead."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

from netns_helpers import metric, require_netns

from conftest import MESHCORE, OutputLines, require_tool, wait_until
from meshcore.netns import sweep


def run(command: str) -> str:
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def test_demo_mesh_serves_its_traffic_shows_where_to_look_and_cleans_up():
    require_netns()
    require_tool("iptables-nft", "iptables")
    require_tool("curl", "curl")
    sweep()
    proc = subprocess.Popen(
        [*MESHCORE, "demo", "--mesh", "--duration", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = OutputLines(proc.stdout)
        out.wait_for("Press Ctrl-C", timeout=120)
        text = "".join(out.lines)
        found = re.findall(r"(?m)^  (\S.*?)  # (.*)$", text)
        commands = {why.strip(): command.strip() for command, why in found}
        namespaces = re.findall(r"netns (mcnet-\S+)", text)
        assert len(namespaces) == 4, text

        web = commands["through the client's sidecar: web-a1"]
        assert "hello from web-a1" in run(web)
        headers = json.loads(run(commands["the app sees meshcore-client-id"]))
        assert headers["meshcore-client-id"] == "spiffe://demo.mesh/ns/demo/sa/client"

        # The load generator's requests are answered, over mTLS at web-a1 (the client's zone).
        def answered() -> bool:
            client = run(commands["client's sidecar"])
            web_a1 = run(commands["web-a1's sidecar"])
            return (
                metric(client, "request_total", direction="outbound", dst_service="web") >= 20
                and metric(web_a1, "request_total", direction="inbound", tls="true") >= 20
            )

        wait_until(answered, timeout=30, what="the client's load answered at web-a1")
        for name in ("web-b1", "web-west1"):
            # Idle (the client stays in its zone), but there, with its identity.
            assert "identity_cert_expiration_timestamp_seconds" in run(commands[f"{name}'s sidecar"])
        endpoints = json.loads(run(commands["web's endpoints and their tiers"]))
        web_service = next(s for s in endpoints["services"] if s["name"] == "web")
        assert sorted(e["tier"] for e in web_service["endpoints"]) == [0, 1, 2]
        assert int(run(commands["bytes zone-a sent to zone-b"])) >= 0

        # Stopping web-a1's app moves the client's traffic to the next tier, zone-b.
        run(commands["stop web-a1's app: traffic moves to zone-b"])
        wait_until(lambda: "hello from web-b1" in run(web), timeout=20, what="an answer from zone-b")

        assert proc.wait(60) == 0, out.text()  # --duration ends it
        assert "demo stopped" in out.text()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [ns for ns in namespaces if ns in left], left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sweep()


def test_demo_mesh_without_root_says_what_to_run_instead():
    as_nobody = []
    if os.geteuid() == 0:  # drop root, keeping only what reading Python under /root needs
        keep = "+dac_read_search"
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        as_nobody += [f"--inh-caps={keep}", f"--ambient-caps={keep}"]
    argv = [*as_nobody, *MESHCORE, "demo", "--mesh", "--duration", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert "needs root" in done.stderr and "`meshcore demo`" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
