"""libtorch's C++ API headers live under /usr/include/torch/csrc/api/include."""

TORCH_COPTS = [
    "-isystem",
    "/usr/include/torch/csrc/api/include",
    "-DUSE_C10D_GLOO",
    "-Wno-unused-variable",
    "-Wno-unused-function",
]
