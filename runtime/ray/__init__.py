"""Scale-out on Ray: `dfx scan --engine ray` (scan: Ray Data; files: inputs and shards) and
`dfx serve` on Ray Serve (deployment). Ray itself is imported inside functions only."""
