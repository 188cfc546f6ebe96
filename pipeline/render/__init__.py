"""Fast renderers of the reference generator: the CPU one (NNPACK, phase convolutions) and the CUDA one."""
