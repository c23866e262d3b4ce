"""Kernel libraries shared by several ops (no Function here): GEMM and bias helpers, the
CPU task pool, im2col/col2im, the direct convolution, strided gather/scatter, elementwise
launchers and the fused Adam update."""
