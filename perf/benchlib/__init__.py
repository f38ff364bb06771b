"""perf/benchlib: the pieces of perf/bench. `system` runs commands and owns what a case
creates (namespaces, links, processes), `switches` sets up each switch under test on two
ports, `traffic` drives rs-gen/rs-sink, `methods` are the frame measurements, `tcp` runs
iperf3 through each switch, `udp` compares switches on UDP socket ports, `report` writes
tables, CSV and plots, `profile` wraps perf stat/record. Python 3 standard library only;
plots run in a venv with matplotlib (see report.py)."""
