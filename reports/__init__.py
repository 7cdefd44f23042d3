"""What reads the store and draws: HTML reports and checkpoint comparisons (later issues).

Reports never recompute a number; they read :class:`harness.store.Store` only.
"""
