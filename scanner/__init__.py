"""Scan appliances: clients (clamd, ICAP), the pool, the built-in appliance and
the fault-injection proxy. A leaf package: imports neither `vfile` nor `journal`."""
