"""The application floor: what a command runs end to end, on top of the library.

`demo` (`unitok demo`) and its report (`demo_report`), `overfit` (`unitok bench overfit`),
`pretrain_shared` (scripts/pretrain_shared.py) and every benchmark's command (`bench_*`: `unitok bench ...`
and `unitok tokenizer bench`). They may import anything in unitok; nothing below imports them
(tests/test_imports.py checks it). What they measure with stays below: classical codecs, metrics and
measuring functions in `unitok.bench`, tables, JSON and loss plots in `unitok.reporting`.
"""
