"""`make demo`: POLCA at work on an embedded cluster (`python -m polca_testbed.demo --help`)."""
