"""The scan: choose a backend, decode and batch, run, and make ONE row per input.

select (which form and runner, and why), model (a loaded bundle model: bundle, active runner,
threshold; used by the Detector, the service and Ray), decode + pipeline (decode pool, batches,
the runner), rows (the one row factory and the hook outer rooms add columns through), results
(writing and reading rows), detector (the Python API), parity_check, commands (`dfx scan`).
Knows none of the rooms around it: serve, ray and provenance import scan, never the reverse.
"""
