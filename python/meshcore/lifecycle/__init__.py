"""Lifecycle of a running proxy (#17): every config change goes through one place, is kept as a
numbered version and can be rolled back, and the process can be replaced by a new one (another
version too) that takes over its listening sockets.

    state.py    where a proxy keeps its state (state_dir)
    history.py  versions persisted in state_dir
    diff.py     what changed between two versions
    manager.py  Lifecycle: validates, applies, records and rolls back config changes
    watch.py    ConfigWatcher: reloads when the config or a file it names changes
    verify.py   Verifier: each route's golden metrics after a reload against the window before
    upgrade.py  the handover of listening sockets to a new process, both sides
    spawn.py    starting the new process for POST /upgrade
    run.py      how `meshcore run` starts a proxy that can be replaced
    cli.py      the lifecycle's CLI verbs (reload, rollback, config, upgrade)
"""
