"""The transparent sidecar's parts that live outside the proxy: `sidecar-init`, the
iptables rules that send a workload's TCP traffic through its meshcore."""
