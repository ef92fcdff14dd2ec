"""The integer network and its one contract (docs/arithmetic.md), with no torch anywhere.

``arith`` (the equations' arithmetic: ranges, (mult, shift), requantization), ``graph``
(:class:`IntGraph` and its nodes, checked whole and proven overflow-free on construction),
``modelfile`` (save and the hostile-input-safe load) and ``execute`` (the numpy reference
executor every other backend is compared with).
"""
