"""samtriton.tools: what is built on the client, the server and the export: the ``samtriton``
command line (``cli``), the benchmarks (``bench``, ``bench_compare``), mask drawing
(``visualize``) and the annotation app with its Label Studio backend (``annotate``)."""
