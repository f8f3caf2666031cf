"""The five services of the suite, one package each.

Each package holds its gRPC entry point (servicer.py), its use cases
(handlers.py), its rules (domain.py), its SQL (store.py), its migrations,
and service.py, which tells the runtime how to build and run it.
"""
