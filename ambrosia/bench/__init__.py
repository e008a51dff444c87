"""ambrosia-bench: the paper's evaluation (section 7), reproduced on the user's machine.

- ``cli``: the ``ambrosia-bench`` command (throughput, ping, cost, run CONFIG).
- ``ambrosia_side``: the client and server immortals, in two processes.
- ``grpc_side``: the gRPC baseline (client-streaming Receive, unary Ping), in two processes.
- ``floors``: the machine's floors for ping (a bare TCP echo; a fixed unit of CPU work).
- ``cost``: the paper's cost model over the price sheets in ``bench_configs/``.
- ``report``: the row types every side produces, the results file, Markdown and plots.
- ``sizes``, ``progress``: size parsing and the live progress line.

Nothing is imported here, so that ``import ambrosia`` never pays for grpc or matplotlib.
"""
