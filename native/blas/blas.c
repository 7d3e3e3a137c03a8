// kiln_blas: OpenBLAS sgemm for tfjs tensors, through Node-API (no C++ wrapper needed).
// The JS side (src/tensor/native.ts) registers it as the matMul kernel of kiln's "native"
// backend; everything else runs in tfjs's cpu backend.
#include <cblas.h>
#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>

#define CHECK(call)                                             \
  do {                                                          \
    if ((call) != napi_ok) {                                    \
      napi_throw_error(env, NULL, "kiln_blas: " #call " failed"); \
      return NULL;                                              \
    }                                                           \
  } while (0)

static float* float_array(napi_env env, napi_value v, size_t* length) {
  napi_typedarray_type type;
  void* data;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, length, &data, &buffer, &offset) != napi_ok || type != napi_float32_array) {
    napi_throw_type_error(env, NULL, "kiln_blas: expected a Float32Array");
    return NULL;
  }
  return (float*)data;
}

// sgemm(transA, transB, M, N, K, A, B, C, batch, strideA, strideB)
//   C[i] = op(A[i]) @ op(B[i]) for i < batch; A[i] = A + i*strideA (0 broadcasts one matrix).
//   Row-major; op(A) is [M, K], op(B) is [K, N], C[i] is [M, N].
static napi_value sgemm(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 11) {
    napi_throw_error(env, NULL, "kiln_blas.sgemm: expected 11 arguments");
    return NULL;
  }
  bool transA, transB;
  int32_t M, N, K, batch;
  int64_t strideA, strideB;
  CHECK(napi_get_value_bool(env, argv[0], &transA));
  CHECK(napi_get_value_bool(env, argv[1], &transB));
  CHECK(napi_get_value_int32(env, argv[2], &M));
  CHECK(napi_get_value_int32(env, argv[3], &N));
  CHECK(napi_get_value_int32(env, argv[4], &K));
  size_t lenA, lenB, lenC;
  float* A = float_array(env, argv[5], &lenA);
  if (!A) return NULL;
  float* B = float_array(env, argv[6], &lenB);
  if (!B) return NULL;
  float* C = float_array(env, argv[7], &lenC);
  if (!C) return NULL;
  CHECK(napi_get_value_int32(env, argv[8], &batch));
  CHECK(napi_get_value_int64(env, argv[9], &strideA));
  CHECK(napi_get_value_int64(env, argv[10], &strideB));
  // Bounds: the JS side computes shapes, but a wrong one must throw, not write out of bounds.
  if (M < 0 || N < 0 || K < 0 || batch < 1 ||
      (size_t)(strideA * (batch - 1)) + (size_t)M * K > lenA ||
      (size_t)(strideB * (batch - 1)) + (size_t)K * N > lenB ||
      (size_t)batch * M * N > lenC) {
    napi_throw_range_error(env, NULL, "kiln_blas.sgemm: shapes do not fit the arrays");
    return NULL;
  }
  const int lda = transA ? M : K;
  const int ldb = transB ? K : N;
  for (int32_t i = 0; i < batch; i++) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K, 1.0f,
                A + i * strideA, lda, B + i * strideB, ldb, 0.0f, C + (size_t)i * M * N, N);
  }
  return NULL;
}

static napi_value set_threads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t n;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &n));
  openblas_set_num_threads(n);
  return NULL;
}

static napi_value get_threads(napi_env env, napi_callback_info info) {
  napi_value out;
  CHECK(napi_create_int32(env, openblas_get_num_threads(), &out));
  return out;
}

static napi_value config(napi_env env, napi_callback_info info) {
  napi_value out;
  CHECK(napi_create_string_utf8(env, openblas_get_config(), NAPI_AUTO_LENGTH, &out));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"sgemm", NULL, sgemm, NULL, NULL, NULL, napi_default, NULL},
      {"setThreads", NULL, set_threads, NULL, NULL, NULL, napi_default, NULL},
      {"getThreads", NULL, get_threads, NULL, NULL, NULL, napi_default, NULL},
      {"config", NULL, config, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
