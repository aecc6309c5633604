"""Lifecycle of a running proxy (#17): every config change goes through one place, is kept as a
numbered version and can be rolled back.

    history.py  versions persisted in state_dir
    diff.py     what changed between two versions
    manager.py  Lifecycle: validates, applies, records and rolls back config changes
    watch.py    ConfigWatcher: reloads when the config or a file it names changes
    verify.py   Verifier: each route's golden metrics after a reload against the window before
"""
