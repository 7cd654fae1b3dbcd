"""The leaderboard: protocol, submission and verification, storage and index, tables, rendered page,
and the reproduction of the baselines (``nlsearch submit | leaderboard | reproduce``)."""
