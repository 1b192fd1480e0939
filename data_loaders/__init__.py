"""NWB -> Arrow shards, Arrow shards -> torch batches, and the simulated benchmark networks."""
