"""Helpers of the test suite, one module per area (imported as `tests.support.<area>`).

adapters     drive a venue adapter with a genuine capture, no sockets
bulk_server  a real HTTP file server with Range support and scripted faults
collectors   run collector shards against the emulator and the real broker, check books
envelopes    valid canonical envelopes of every event type
lake         lake sink topics, producing processed envelopes, reading tables back
processing   processor subprocesses, reading topics back
stack        the `ticklake` console script, a stack's processes, the session's shared stack

What benchmarks use as well (the samples path, the synthetic market, the Binance capture
hour, producing to the project's topics) is in the project's workloads/ package, which
bench/ imports; bench/ never imports tests.
"""
