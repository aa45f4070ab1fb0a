"""Coverage-guided fuzzing of kmsemu's parsers with atheris (issue 17; not shipped).

``fuzz.targets`` holds one function per target (bytes in, an exception out when a bug
is found); ``scripts/fuzz`` runs one under atheris/libFuzzer; ``fuzz/corpus/TARGET/``
are the seeds (``fuzz/make_corpus.py`` writes them); ``tests/test_fuzz.py`` runs each
target briefly inside the test suite. Results: docs/quality.md, "Fuzzing (issue 17)".
"""
