{
  "targets": [
    {
      "target_name": "kiln_blas",
      "sources": ["blas.c"],
      "libraries": ["-lopenblas", "-lm", "-lpthread"],
      "cflags": ["-O3", "-std=c11"]
    }
  ]
}
