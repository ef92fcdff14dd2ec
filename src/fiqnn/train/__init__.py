"""Everything that trains, in the order of docs/method.md.

``teacher`` (the float BN teacher), ``quantizers`` and ``units`` (the code-domain layers of
the teacher QNN and the BN-free student), ``graphnet`` (the network form of both), ``qnn``
(step 0: the teacher QNN), ``fold`` (step 1: local initialisation), ``loop`` (the batch
stream, losses and the patience scheduler), ``ptl`` (step 2: the stages), ``distill`` (the
whole pipeline, with checkpoints) and ``convert`` (the trained student -> IntGraph).
"""
