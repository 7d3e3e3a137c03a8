{
  "targets": [
    {
      "target_name": "kiln_blas",
      "sources": ["blas.c"],
      "libraries": ["-lopenblas", "-lmvec", "-lm", "-lpthread"],
      "cflags": ["-O3", "-std=c11", "-fno-math-errno"]
    }
  ]
}
