"""Exporters of an IntGraph: integer ONNX (onnx.py) and C99 source (c99.py).

Each is imported on demand, so ``import fiqnn`` never loads onnx or a compiler.
"""
