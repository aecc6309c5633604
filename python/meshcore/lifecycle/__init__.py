"""Lifecycle of a running proxy: config history and rollback, verified reloads, and the upgrade of
the process by handing its listening sockets to a new one."""
